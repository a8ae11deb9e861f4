"""Tests of the colour overlay (`dataset_scripts/preview.py::draw_panoptic_overlay`)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dataset_scripts.preview import draw_panoptic_overlay

GREY = 100


def _scene() -> tuple[Image.Image, np.ndarray, list[dict]]:
    """A 96x64 grey photo: wall on top (id 1), two boxes (ids 2, 3), void bottom rows."""
    image = Image.new("RGB", (96, 64), (GREY, GREY, GREY))
    ids = np.zeros((64, 96), dtype=np.int64)
    ids[:20, :] = 1
    ids[25:50, 5:40] = 2
    ids[25:50, 50:90] = 3
    segments = [
        {"id": 1, "name": "wall", "color": (0, 0, 255), "isthing": False},
        {"id": 2, "name": "excavator", "color": (255, 0, 0), "isthing": True},
        {"id": 3, "name": "excavator", "color": (255, 0, 0), "isthing": True},
    ]
    return image, ids, segments


def test_output_is_image_plus_legend_strip():
    image, ids, segments = _scene()
    out = draw_panoptic_overlay(image, ids, segments)
    assert out.mode == "RGB"
    assert out.width == image.width
    assert out.height > image.height  # legend strip below
    legend = np.asarray(out)[image.height :]
    # The legend holds a swatch of every class present.
    colors = {tuple(c) for c in legend.reshape(-1, 3)}
    assert (0, 0, 255) in colors and (255, 0, 0) in colors


def test_colours_blend_where_segments_are_and_void_is_untouched():
    image, ids, segments = _scene()
    out = np.asarray(draw_panoptic_overlay(image, ids, segments, alpha=0.5))[: image.height].astype(int)
    # Interior of the wall (away from outlines): half grey, half blue.
    assert np.allclose(out[5, 10], [50, 50, 177.5], atol=1)
    # First excavator instance has the class colour: reddish.
    corner = out[27, 7]
    assert corner[0] > corner[1] + 60 and corner[0] > corner[2] + 60
    # Void pixels are exactly the photo (thing labels, which may overflow small segments, aside).
    stuff_only = [dict(s, isthing=False) for s in segments]
    plain = np.asarray(draw_panoptic_overlay(image, ids, stuff_only))[: image.height].astype(int)
    assert np.all(plain[ids == 0] == GREY)
    assert np.all(out[55:] == GREY)  # void rows far from any label


def test_outlines_and_instances_are_distinguishable():
    image, ids, segments = _scene()
    out = np.asarray(draw_panoptic_overlay(image, ids, segments))[: image.height].astype(int)
    # Outline: the border pixel of a segment differs from its interior.
    assert not np.array_equal(out[25, 20], out[35, 20])
    # Two instances of one thing class get different shades of the class colour.
    assert not np.array_equal(out[27, 7], out[27, 52])


def test_thing_names_are_written_on_the_segment():
    image, ids, segments = _scene()
    named = np.asarray(draw_panoptic_overlay(image, ids, segments))[: image.height]
    unnamed = [dict(s, isthing=False) for s in segments]
    plain = np.asarray(draw_panoptic_overlay(image, ids, unnamed))[: image.height]
    differs = np.any(named != plain, axis=-1)
    # Text pixels appear only inside the thing segments' region, not on the wall.
    assert differs[ids == 2].any() and differs[ids == 3].any()
    assert not differs[:15].any()


def test_deterministic():
    image, ids, segments = _scene()
    a = np.asarray(draw_panoptic_overlay(image, ids, segments))
    b = np.asarray(draw_panoptic_overlay(image, ids, segments))
    assert np.array_equal(a, b)


def test_empty_segment_list_returns_the_photo():
    image, ids, _ = _scene()
    out = draw_panoptic_overlay(image, ids, [])
    assert out.size == image.size
    assert np.array_equal(np.asarray(out), np.asarray(image))


def test_segments_absent_from_the_map_are_not_in_the_legend():
    image, ids, segments = _scene()
    extra = [
        *segments,
        {"id": 99, "name": "a-very-long-class-name-absent", "color": (0, 255, 0), "isthing": True},
    ]
    a = np.asarray(draw_panoptic_overlay(image, ids, segments))
    b = np.asarray(draw_panoptic_overlay(image, ids, extra))
    assert np.array_equal(a, b)


def test_missing_colour_gets_a_deterministic_one_and_grey_input_modes_work():
    image, ids, segments = _scene()
    segments = [dict(s, color=None) for s in segments]
    out = draw_panoptic_overlay(image.convert("L"), ids, segments)
    assert out.mode == "RGB" and out.height > image.height


def test_legend_wraps_many_classes_into_rows():
    image = Image.new("RGB", (80, 40), (GREY, GREY, GREY))
    ids = np.repeat(np.arange(1, 9), 10)[None, :].repeat(40, axis=0)
    segments = [
        {"id": i, "name": f"class_{i}", "color": (30 * i, 0, 0), "isthing": False} for i in range(1, 9)
    ]
    one = draw_panoptic_overlay(image, ids, segments[:1])
    many = draw_panoptic_overlay(image, ids, segments)
    assert many.height > one.height  # more rows


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_bad_alpha_raises(alpha):
    image, ids, segments = _scene()
    with pytest.raises(ValueError, match="alpha"):
        draw_panoptic_overlay(image, ids, segments, alpha=alpha)


def test_shape_mismatch_raises():
    image, ids, segments = _scene()
    with pytest.raises(ValueError, match="shape"):
        draw_panoptic_overlay(image, ids[:10], segments)


def test_one_palette_for_categories_labels_and_uncoloured_segments():
    from dataset_scripts.preview import PALETTE_SIZE, distinct_colors, palette_color

    colors = distinct_colors(PALETTE_SIZE)
    assert colors[:7] == distinct_colors(7)  # a longer table starts with the shorter one
    assert [list(palette_color(i)) for i in range(PALETTE_SIZE)] == colors
    assert palette_color(0) == (242, 36, 36) and palette_color(PALETTE_SIZE) == palette_color(0)
    # A segment without a colour is drawn in the palette colour of its id.
    image, ids, segments = _scene()
    segments[0] = {"id": 1, "name": "wall", "isthing": False}
    overlay = np.asarray(draw_panoptic_overlay(image, ids, segments, alpha=1.0))
    assert tuple(overlay[10, 40]) == palette_color(1)


def test_side_by_side_enlarges_small_panels_and_keeps_their_pixels():
    from dataset_scripts.preview import side_by_side

    left = Image.new("RGB", (100, 50), (255, 0, 0))
    right = Image.new("RGB", (100, 50), (0, 0, 255))
    picture = np.asarray(side_by_side([("ground truth", left), ("prediction", right)], min_width=480))
    assert picture.shape[1] == 2 * 500 + 8  # each panel x5 (>= 480 px), an 8 px gutter
    bottom = picture[-1]
    assert (bottom[:500] == (255, 0, 0)).all() and (bottom[508:] == (0, 0, 255)).all()
