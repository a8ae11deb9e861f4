"""Load pictures the way CVAT showed them (upright RGB) and write them to the panoptic folder.

CVAT records the width/height of the *displayed* picture, i.e. after applying the EXIF
orientation, so annotations are in upright pixel coordinates: the picture must be rotated the
same way before its size is compared with the export and before it is written out.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image, ImageOps

from dataset_scripts.cvat.records import ConversionError

_EXIF_ORIENTATION = 0x0112


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

    Raises:
        ConversionError: the file cannot be decoded, or its upright size differs from the export's.
    """
    what = f"{path}" + (f" (image id {image_id})" if image_id else "")
    try:
        with Image.open(path) as img:
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            img.load()  # decode now so that a truncated file fails here, naming the file
            upright = ImageOps.exif_transpose(img)
            changed = orientation not in (0, 1)
            if upright.mode != "RGB":
                upright = upright.convert("RGB")
                changed = True
            elif upright is img:
                upright = img.copy()
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for unreadable/corrupt files
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
