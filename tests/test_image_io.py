"""`image_io.load_upright_rgb` on deep grayscale pictures (used by the converter and by predict)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dataset_scripts.cvat.records import ConversionError
from dataset_scripts.image_io import load_upright_rgb


@pytest.mark.parametrize(
    ("mode", "suffix", "values", "full_scale"),
    [
        ("I;16", ".png", np.array([[0, 257, 32896], [65535, 1000, 60000]], np.uint16), 65535),
        ("I", ".tif", np.array([[0, 257, 32896], [65535, 1000, 60000]], np.int32), 65535),
        ("F", ".tif", np.array([[0.0, 0.25, 0.5], [1.0, 0.1, 0.9]], np.float32), 1.0),
    ],
)
def test_deep_grayscale_is_scaled_not_clipped(tmp_path, mode, suffix, values, full_scale):
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode == mode  # the case under test, as PIL reads it back
    image, changed = load_upright_rgb(path, (3, 2))
    pixels = np.asarray(image)
    expected = np.rint(values.astype(np.float64) * 255 / full_scale)
    assert changed and image.mode == "RGB"
    for channel in range(3):
        np.testing.assert_allclose(pixels[..., channel], expected, atol=1)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([[0.0, 2.0]], np.float32), "32-bit float pixels outside"),
        (np.array([[0.0, np.nan]], np.float32), "32-bit float pixels outside"),
        (np.array([[-5, 70000]], np.int32), r"I pixels outside \[0, 65535\]"),
    ],
)
def test_deep_grayscale_without_a_scale_is_refused(tmp_path, values, message):
    path = tmp_path / "deep.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(ConversionError, match=message) as info:
        load_upright_rgb(path, image_id="4 of a.json")
    assert str(path) in str(info.value) and "image id 4 of a.json" in str(info.value)


def test_decompression_bomb_is_a_conversion_error(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 > 2 x 100: PIL refuses it
    with pytest.raises(ConversionError, match="cannot decode image"):
        load_upright_rgb(path)
