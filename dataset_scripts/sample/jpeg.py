"""JPEG bytes of a rendered scene, stored as CVAT users' cameras store them (RGB, gray, EXIF-rotated)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

EXIF_ORIENTATION_TAG = 0x0112
STORAGES = ("rgb", "gray", "exif_rotated")


def encode_image(image: np.ndarray, storage: str = "rgb", quality: int = 88) -> bytes:
    """JPEG bytes of an ``(H, W, 3)`` uint8 image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        storage: ``"rgb"``; ``"gray"`` (mode L); ``"exif_rotated"``: pixels stored rotated by 90
            degrees counter-clockwise with EXIF Orientation 6, so that a viewer applying the tag
            (as CVAT does) shows the original upright image.
        quality: JPEG quality.
    """
    pil = Image.fromarray(image, mode="RGB")
    exif = Image.Exif()
    if storage == "gray":
        pil = pil.convert("L")
    elif storage == "exif_rotated":
        pil = pil.transpose(Image.Transpose.ROTATE_90)
        exif[EXIF_ORIENTATION_TAG] = 6
    elif storage != "rgb":
        raise ValueError(f"unknown storage {storage!r} (expected one of {', '.join(STORAGES)})")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()
