"""The COCO-panoptic format: segment-id PNG encoding, per-segment statistics, JSON loading.

One PNG per image stores a segment id per pixel as ``id = R + 256 * G + 256**2 * B``; id 0 is
void (unlabelled). The JSON lists, per image, the segments (``segments_info``) with their
category, crowd flag, area and xywh box. This is the layout of COCO, panopticapi,
facebookresearch/detr and detectron2, so everything written here is read unchanged by them.

Every panoptic PNG is decoded by `_decode_png`: libspng (`pyspng`) where it applies, 1.7x faster
than PIL and bit-identical, else PIL. `read_panoptic_ids` gives the ``(H, W)`` uint32 ids the
fastest way, `read_panoptic_png` the same as int64, `read_panoptic_rgb` the RGB bytes.
The JSON type checks (`check_annotation`, ...) are shared by `load_panoptic_json` and the PQ CLI.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from dataset_scripts.atomic_io import atomic_write_bytes

try:  # libspng: the fast PNG decoder (see `_decode_png`); PIL is the fallback
    import pyspng as _spng
except ImportError:  # pragma: no cover - pyspng is in requirements.txt
    _spng = None

VOID_ID = 0
MAX_SEGMENT_ID = 256**3 - 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PanopticFormatError(ValueError):
    """A COCO-panoptic file is malformed or inconsistent (the message names file and id)."""


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """Decode a panoptic PNG's pixels into segment ids (transformers' ``rgb_to_id``, in int64).

    Args:
        rgb: ``(H, W, 3)`` uint8 array.

    Returns:
        ``(H, W)`` int64 array of segment ids ``R + 256 G + 256^2 B``.
    """
    # Imported here: transformers.image_transforms imports torch (seconds), which the converter and
    # the PQ CLI never need. Given int64 input, rgb_to_id computes and returns int64 (for uint8 input
    # it would return int32).
    from transformers.image_transforms import rgb_to_id

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise PanopticFormatError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    return rgb_to_id(rgb.astype(np.int64))


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Encode ``(H, W)`` integer segment ids as an ``(H, W, 3)`` uint8 RGB array.

    The same values and dtype as transformers' ``id_to_rgb`` (a test checks it), not a call to it:
    its module imports torch (measured 5 s here), start-up the converter, which writes PNGs but
    never needs torch, would pay; and its ``%`` / ``//`` on an int64 copy took 6.6 ms for a 480x640
    map against 0.65 ms for these bit operations.
    """
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise PanopticFormatError(f"segment ids must lie in [0, {MAX_SEGMENT_ID}]")
    ids = ids.astype(np.uint32, copy=False)
    rgb = np.empty((*ids.shape, 3), dtype=np.uint8)
    rgb[..., 0] = ids & 0xFF
    rgb[..., 1] = (ids >> 8) & 0xFF
    rgb[..., 2] = (ids >> 16) & 0xFF
    return rgb


def _spng_decodes(data: bytes) -> bool:
    """Whether the fast decoder takes this PNG: 8-bit RGB or RGBA, not interlaced.

    Everything else (palette, grey, 16-bit, interlaced, not a PNG) goes to PIL, so that such files
    are accepted or refused exactly as before (e.g. PIL reads 16-bit RGB as its high bytes).
    """
    return (
        _spng is not None
        and len(data) > 28
        and data[:8] == _PNG_SIGNATURE
        and data[12:16] == b"IHDR"
        and data[24] == 8  # bit depth
        and data[25] in (2, 6)  # colour type: RGB, RGBA
        and data[28] == 0  # interlace method: none
        # libspng is told to ignore CRC errors; PIL refuses a broken header, so such a file goes there
        and zlib.crc32(data[12:29]) == int.from_bytes(data[29:33], "big")
    )


def _decode_png(path: str | os.PathLike, mode: str) -> np.ndarray:
    """The one place that decodes panoptic PNGs: ``(H, W, 3)`` (mode RGB) or ``(H, W, 4)`` uint8.

    libspng (`pyspng`) decodes our panoptic PNGs 1.7x faster than PIL, bit-identically; PIL is the
    fallback for the PNG kinds it does not take (see `_spng_decodes`) and when pyspng is missing.
    Mode RGBA gives alpha 255 where the PNG has none.

    Raises:
        FileNotFoundError: no such file (the message names it).
        PanopticFormatError: not a decodable RGB(A) PNG (the message names the file).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"panoptic PNG not found: {path}") from None
    except OSError as err:
        raise PanopticFormatError(f"{path}: cannot read panoptic PNG ({err.strerror or err})") from err
    if _spng_decodes(data):
        try:
            return _spng.load(data, format=mode)
        except Exception as err:  # pyspng raises RuntimeError with libspng's reason
            raise PanopticFormatError(f"{path}: cannot decode panoptic PNG ({err})") from err
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode not in ("RGB", "RGBA"):
                raise PanopticFormatError(f"{path}: panoptic PNG must be RGB, got mode {img.mode}")
            return np.asarray(img if img.mode == mode else img.convert(mode))
    except PanopticFormatError:
        raise
    except UnidentifiedImageError:  # its message would name our in-memory buffer, not the file
        raise PanopticFormatError(f"{path}: cannot decode panoptic PNG (not an image file)") from None
    except Exception as err:  # PIL raises many types for broken files
        raise PanopticFormatError(f"{path}: cannot decode panoptic PNG ({err})") from err


def retain_freed_memory() -> None:
    """Make this process keep freed memory for reuse instead of returning it to the OS (glibc).

    For processes that decode many PNGs, such as the PQ CLI and its workers: pyspng mallocs each
    image's ``H * W * 4`` output bytes, above glibc's mmap threshold, and glibc hands the memory
    back after each image, so every decode page-faults its whole buffer afresh (measured: 150k
    page faults, about 20 % of the CPU time, for 200 pairs of 480x640 PNGs). With both thresholds
    raised the next image reuses the memory. It changes the allocator of the whole process, so
    call it only in processes you own, not from library code. No-op without glibc's ``mallopt``.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc <malloc.h>
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum for a dynamic threshold
    mallopt(m_trim_threshold, 64 << 20)


def read_panoptic_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode a panoptic PNG into its ``(H, W, 3)`` uint8 RGB array (ids not yet combined).

    An alpha channel is dropped (as panopticapi does, which reads only R, G and B).

    Raises:
        FileNotFoundError: no such file (the message names it).
        PanopticFormatError: not a decodable RGB(A) PNG (the message names the file).
    """
    return _decode_png(path, "RGB")


def read_panoptic_ids(path: str | os.PathLike) -> np.ndarray:
    """Decode a panoptic PNG into an ``(H, W)`` uint32 id map, the fastest way.

    The PNG is decoded as RGBA and each pixel's four bytes read as one little-endian uint32, so the
    id ``R + 256 G + 256^2 B`` is that word with its alpha byte cleared: one pass over ``H * W``
    words instead of combining three byte planes. (Comparing neighbouring ids, the PQ evaluation's
    only full-image work, is also three times cheaper on words than on bytes.)

    Raises:
        FileNotFoundError, PanopticFormatError: as `read_panoptic_rgb`.
    """
    words = _decode_png(path, "RGBA").view("<u4")[..., 0]
    if not words.flags.writeable:  # PIL's arrays are read-only: one more copy on the fallback path
        return words & 0xFFFFFF
    return np.bitwise_and(words, 0xFFFFFF, out=words)


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
    """Read a panoptic PNG into an ``(H, W)`` int64 id map; errors name the file (see `read_panoptic_rgb`)."""
    return read_panoptic_ids(path).astype(np.int64)


def encode_panoptic_png(ids: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W)`` id map (fast zlib level: these files are rewritten often)."""
    buf = io.BytesIO()
    Image.fromarray(id2rgb(ids), mode="RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_panoptic_png(path: str | os.PathLike, ids: np.ndarray) -> None:
    """Atomically write an ``(H, W)`` id map as a panoptic PNG."""
    atomic_write_bytes(path, encode_panoptic_png(ids))


@dataclass(frozen=True)
class SegmentStats:
    """Exact area and box of one segment of an id map.

    Attributes:
        area: Number of pixels.
        bbox: ``[x, y, w, h]`` in pixels, the tight box around the pixels (COCO convention:
            integer pixel edges, so a single pixel at (x, y) has box ``[x, y, 1, 1]``).
    """

    area: int
    bbox: list[int]


def segment_stats(ids: np.ndarray) -> dict[int, SegmentStats]:
    """Area and tight xywh box of every non-void segment of an ``(H, W)`` id map.

    Linear time: when the ids are small (segment ids numbered 1..n, as this project writes
    them) `bincount` gives the areas and `scipy.ndimage.find_objects` the boxes directly;
    large ids (COCO's category-derived ids) are first relabelled to 1..K with `np.unique`,
    which sorts the pixels.
    """
    from scipy import ndimage  # here: keeps this module (imported by every PQ worker process) light

    ids = np.asarray(ids)
    if ids.size == 0:
        return {}
    if ids.min() < 0:
        raise PanopticFormatError("segment ids must be non-negative")
    max_id = int(ids.max())
    if max_id <= 4 * ids.size + 1024:
        labels = ids.astype(np.intp, copy=False)
        seg_ids = np.arange(max_id + 1)
    else:
        seg_ids, labels = np.unique(ids, return_inverse=True)
        labels = labels.reshape(ids.shape)
        if seg_ids[0] != VOID_ID:  # keep label 0 for void so that find_objects skips it
            seg_ids = np.concatenate([[VOID_ID], seg_ids])
            labels = labels + 1
    areas = np.bincount(labels.ravel(), minlength=len(seg_ids))
    stats: dict[int, SegmentStats] = {}
    for label, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        rows, cols = found
        stats[int(seg_ids[label])] = SegmentStats(
            area=int(areas[label]),
            bbox=[cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start],
        )
    return stats


def load_json(path: str | os.PathLike) -> Any:
    """Load a JSON file, turning every failure into an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file not found: {path}")
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PanopticFormatError(f"{path}: malformed JSON ({err})") from err
    except OSError as err:  # e.g. permission denied
        raise PanopticFormatError(f"{path}: cannot read JSON ({err.strerror or err})") from err


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """A JSON value as written in the file (``null``, ``"1"``), shortened for messages."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def check_category(cat: Any, index: int, path: Any) -> None:
    """Types of ``categories[index]`` of JSON file ``path``: an object, integer ``id``, ``isthing`` 0/1.

    Raises:
        PanopticFormatError: naming the file, the entry and the value.
    """
    if not isinstance(cat, dict):
        raise PanopticFormatError(f"{path}: categories[{index}] is {_shown(cat)}, expected an object")
    if not _is_int(cat.get("id")):
        raise PanopticFormatError(
            f"{path}: categories[{index}] has id {_shown(cat.get('id'))}, expected an integer"
        )
    if cat.get("isthing", 0) not in (0, 1):  # True / False compare equal to 1 / 0
        raise PanopticFormatError(
            f"{path}: category {cat['id']} has isthing {_shown(cat.get('isthing'))}, expected 0 or 1"
        )


def _check_segment(seg: Any, index: int, image_id: Any, path: Any) -> None:
    where = f"{path}: image {image_id}: segments_info[{index}]"
    if not isinstance(seg, dict):
        raise PanopticFormatError(f"{where} is {_shown(seg)}, expected an object with id and category_id")
    if not _is_int(seg.get("id")):
        raise PanopticFormatError(f"{where} has id {_shown(seg.get('id'))}, expected an integer")
    where = f"{path}: image {image_id}: segment {seg['id']}"
    if not _is_int(seg.get("category_id")):
        kind = " (a string)" if isinstance(seg.get("category_id"), str) else ""
        raise PanopticFormatError(
            f"{where} has category_id {_shown(seg.get('category_id'))}{kind}, expected an integer"
        )
    if seg.get("iscrowd", 0) not in (0, 1):
        raise PanopticFormatError(f"{where} has iscrowd {_shown(seg.get('iscrowd'))}, expected 0 or 1")
    area = seg.get("area", 0)
    if not isinstance(area, (int, float)) or isinstance(area, bool) or area < 0:
        raise PanopticFormatError(f"{where} has area {_shown(area)}, expected a number >= 0")


def check_annotation(ann: Any, index: int, path: Any) -> None:
    """Types of ``annotations[index]`` of JSON file ``path`` and of its ``segments_info`` entries.

    An annotation is an object with ``image_id`` (integer or string), ``file_name`` (the PNG) and
    ``segments_info``, a list of objects with integer ``id`` and ``category_id``, optional
    ``iscrowd`` 0/1 and ``area`` >= 0. A JSON from another tool can hold anything (``null``, string
    ids); checking first turns what would be a traceback later into one line.

    Raises:
        PanopticFormatError: naming the file, the image and the segment.
    """
    if not isinstance(ann, dict):
        raise PanopticFormatError(
            f"{path}: annotations[{index}] is {_shown(ann)}, expected an object with image_id, file_name "
            "and segments_info"
        )
    image_id = ann.get("image_id")
    if not (_is_int(image_id) or isinstance(image_id, str)):
        raise PanopticFormatError(
            f"{path}: annotations[{index}] has image_id {_shown(image_id)}, expected an integer or a string"
        )
    if not isinstance(ann.get("file_name"), str) or not ann["file_name"]:
        raise PanopticFormatError(
            f"{path}: image {image_id} has file_name {_shown(ann.get('file_name'))}, expected a PNG name"
        )
    segments = ann.get("segments_info", [])
    if not isinstance(segments, list):
        raise PanopticFormatError(
            f"{path}: image {image_id} has segments_info {_shown(segments)}, expected a list"
        )
    for seg_index, seg in enumerate(segments):
        _check_segment(seg, seg_index, image_id, path)


def check_image(image: Any, index: int, path: Any) -> None:
    """``images[index]`` of JSON file ``path`` is an object with an integer or string ``id``."""
    if not isinstance(image, dict) or not (_is_int(image.get("id")) or isinstance(image.get("id"), str)):
        raise PanopticFormatError(
            f"{path}: images[{index}] is {_shown(image)}, expected an object with an id"
        )


def load_panoptic_json(path: str | os.PathLike) -> dict[str, Any]:
    """Load and sanity-check a COCO-panoptic JSON (``images``, ``annotations``, ``categories``).

    Raises:
        PanopticFormatError: a key is missing, an entry has the wrong type (see `check_annotation`),
            an image id is duplicated, an annotation names an unknown image, or a segment names an
            unknown category or repeats an id.
    """
    data = load_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise PanopticFormatError(f"{path}: not a COCO-panoptic file (no '{key}' list)")
    image_ids: set[Any] = set()
    for index, image in enumerate(data["images"]):
        check_image(image, index, path)
        if image["id"] in image_ids:
            raise PanopticFormatError(f"{path}: duplicate image id {image['id']}")
        image_ids.add(image["id"])
    for index, cat in enumerate(data["categories"]):
        check_category(cat, index, path)
    category_ids = {cat["id"] for cat in data["categories"]}
    for index, ann in enumerate(data["annotations"]):
        check_annotation(ann, index, path)
        if ann["image_id"] not in image_ids:
            raise PanopticFormatError(
                f"{path}: annotation {ann['file_name']} names unknown image {ann['image_id']}"
            )
        seen: set[int] = set()
        for seg in ann.get("segments_info", []):
            if seg["category_id"] not in category_ids:
                raise PanopticFormatError(
                    f"{path}: image {ann['image_id']} segment {seg['id']} has unknown category {seg['category_id']}"
                )
            if seg["id"] in seen:
                raise PanopticFormatError(f"{path}: image {ann['image_id']} repeats segment id {seg['id']}")
            seen.add(seg["id"])
    return data
