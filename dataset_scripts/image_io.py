"""Load pictures the way CVAT showed them (upright RGB) and write them to the panoptic folder.

CVAT records the width/height of the *displayed* picture, i.e. after applying the EXIF
orientation, so annotations are in upright pixel coordinates: the picture must be rotated the
same way before its size is compared with the export and before it is written out.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dataset_scripts.cvat.records import ConversionError

_EXIF_ORIENTATION = 0x0112
# Grayscale modes deeper than 8 bits: PIL's convert("RGB") clips them to white/black.
_HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


def _high_depth_to_rgb(img: Image.Image, what: str) -> Image.Image:
    """16-bit / 32-bit integer and float grayscale to 8-bit RGB, scaled (PIL's convert clips them).

    ``I;16*`` and ``I`` pixels in [0, 65535] are 16-bit: ``v * 255 / 65535``, rounded. ``F`` pixels
    in [0, 1] are scaled by 255. Other ranges have no agreed meaning and are refused.

    Raises:
        ConversionError: ``I`` pixels outside [0, 65535], ``F`` pixels outside [0, 1] or not finite.
    """
    pixels = np.asarray(img)
    if img.mode == "F":
        if not np.isfinite(pixels).all() or pixels.min(initial=0) < 0 or pixels.max(initial=0) > 1:
            raise ConversionError(
                f"{what}: 32-bit float pixels outside [0, 1]: cannot scale to 8 bits; save the picture as 8-bit"
            )
        scaled = np.rint(pixels.astype(np.float64) * 255)
    else:
        wide = pixels.astype(np.int64)
        if wide.min(initial=0) < 0 or wide.max(initial=0) > 65535:
            raise ConversionError(
                f"{what}: {img.mode} pixels outside [0, 65535]: cannot scale to 8 bits; save the picture as 8-bit"
            )
        scaled = (wide * 255 + 32767) // 65535
    return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")


def load_upright_rgb(
    path: Path, expected_size: tuple[int, int] | None = None, image_id: str = ""
) -> tuple[Image.Image, bool]:
    """Decode a picture, apply its EXIF orientation and convert it to RGB.

    Args:
        path: Picture file.
        expected_size: ``(width, height)`` the export recorded (upright); checked when given.
        image_id: The export's id of the image, for error messages.

    Returns:
        The upright RGB picture (fully decoded) and whether it differs from the file's pixels
        (rotated or converted from grayscale/RGBA/CMYK/palette), i.e. whether it must be re-encoded.
        16-bit and float grayscale pictures are scaled to 8 bits (see `_high_depth_to_rgb`).

    Raises:
        ConversionError: the file cannot be decoded (or is a decompression bomb), its pixel values
            cannot be scaled to 8 bits, or its upright size differs from the export's.
    """
    what = f"{path}" + (f" (image id {image_id})" if image_id else "")
    try:
        with Image.open(path) as img:
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            img.load()  # decode now so that a truncated file fails here, naming the file
            upright = ImageOps.exif_transpose(img)
            changed = orientation not in (0, 1)
            if upright.mode in _HIGH_DEPTH_MODES:
                upright = _high_depth_to_rgb(upright, what)
                changed = True
            elif upright.mode != "RGB":
                upright = upright.convert("RGB")
                changed = True
            elif upright is img:
                upright = img.copy()
    except ConversionError:
        raise
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as err:  # unreadable/corrupt files
        raise ConversionError(f"{what}: cannot decode image ({err})") from err
    if expected_size is not None and upright.size != tuple(expected_size):
        raise ConversionError(
            f"{what}: decoded size {upright.size[0]}x{upright.size[1]} (upright) does not match the "
            f"annotation's {expected_size[0]}x{expected_size[1]}"
        )
    return upright, changed


def write_image(src: Path, dst: Path, image: Image.Image, changed: bool) -> None:
    """Write the upright RGB picture under ``dst``: copy the bytes when unchanged, else re-encode.

    Re-encoding keeps the format implied by the file name (JPEG at quality 95) so that the file
    name of the export is kept.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not changed:
        shutil.copyfile(src, dst)
        return
    fmt = Image.registered_extensions().get(dst.suffix.lower(), "PNG")
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    image.save(dst, format=fmt, **kwargs)


class UprightImageLoader:
    """Picklable ``path -> upright RGB PIL image`` callable (for the stuff model's data loading)."""

    def __call__(self, path: Path) -> Image.Image:
        return load_upright_rgb(Path(path))[0]
