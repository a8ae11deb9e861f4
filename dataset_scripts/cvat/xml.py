"""Read "CVAT for images 1.1" XML (``annotations.xml``) into `cvat_records`, incl. CVAT's own RLE.

Elements read per ``<image id name width height>``:

* ``<polygon points="x,y;x,y;...">`` -> a one-part polygon;
* ``<mask rle="..." left top width height>`` -> a CVAT brush mask: run lengths alternating
  0/1, starting with a run of 0s, row-major inside the ``width x height`` box at
  (``left``, ``top``); decoded by `decode_cvat_rle`;
* ``<box>`` (box-only) and ``<tag>`` (image-level) -> kept as records, reported and skipped later;
* anything else (``polyline``, ``points``, ``ellipse``, ``cuboid``, ``skeleton``) -> ``unsupported``.

Every shape keeps its ``z_order`` (higher on top) and ``occluded`` flag. Pictures are looked up in
``images/`` next to the XML, then next to the XML itself (names may contain folders).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from dataset_scripts.cvat.records import ConversionError, Export, ImageRecord, Shape

_SKIPPED_ELEMENTS = {"attribute"}


def decode_cvat_rle(
    counts: Sequence[int],
    width: int,
    height: int,
    window: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Decode CVAT's mask RLE, optionally only a window of the box.

    Args:
        counts: Run lengths, alternating 0s and 1s, starting with 0s (possibly an empty run).
        width: Box width.
        height: Box height.
        window: ``(x0, y0, x1, y1)`` part of the box to decode (default: all of it). The work
            and memory are proportional to the window, never to the box, so a huge box that
            only overlaps the image a little costs little.

    Returns:
        ``(y1 - y0, x1 - x0)`` bool array, row-major as CVAT writes it.

    Raises:
        ValueError: the runs do not cover exactly ``width * height`` pixels.
    """
    runs = np.asarray(counts, dtype=np.int64)
    if len(runs) and runs.min() < 0 or int(runs.sum()) != width * height:
        raise ValueError(f"run lengths sum to {int(runs.sum())}, box has {width * height} pixels")
    x0, y0, x1, y1 = window if window is not None else (0, 0, width, height)
    ends = np.cumsum(runs)
    rows = np.arange(y0, y1, dtype=np.int64)[:, None] * width
    positions = rows + np.arange(x0, x1, dtype=np.int64)[None, :]
    # Run index of each pixel; odd runs are foreground.
    return (np.searchsorted(ends, positions, side="right") % 2).astype(bool)


def _int_attr(elem: ET.Element, name: str, where: str) -> int:
    value = elem.get(name)
    try:
        return int(round(float(value)))  # CVAT writes integers; tolerate "12.0"
    except (TypeError, ValueError, OverflowError):
        raise ConversionError(f"{where}: attribute {name}={value!r} is not a finite number") from None


def _parse_points(text: str | None, where: str) -> tuple[float, ...]:
    if not text:
        return ()
    coords: list[float] = []
    try:
        for pair in text.split(";"):
            x, y = pair.split(",")
            coords += [float(x), float(y)]
    except ValueError:
        raise ConversionError(f"{where}: malformed points {text[:60]!r}") from None
    if not all(math.isfinite(v) for v in coords):
        raise ConversionError(f"{where}: points have a non-finite coordinate (NaN or infinity)")
    return tuple(coords)


def _parse_shape(elem: ET.Element, index: int, image: ImageRecord, src: str, order: int) -> Shape:
    annotation_id = f"{image.image_id}/{elem.tag}#{index}"
    where = f"{src}: image {image.image_id} ({image.file_name}) {elem.tag} #{index}"
    label = elem.get("label")
    if label is None:
        raise ConversionError(f"{where}: no label")
    common = dict(
        label=label,
        source=src,
        annotation_id=annotation_id,
        order=order,
        z_order=_int_attr(elem, "z_order", where) if elem.get("z_order") is not None else 0,
        occluded=elem.get("occluded") == "1",
    )
    if elem.tag == "polygon":
        return Shape(kind="polygon", polygons=(_parse_points(elem.get("points"), where),), **common)
    if elem.tag == "mask":
        box = tuple(_int_attr(elem, k, where) for k in ("left", "top", "width", "height"))
        if box[2] <= 0 or box[3] <= 0:
            raise ConversionError(f"{where}: mask box {box[2]}x{box[3]} has a non-positive size")
        try:
            counts = tuple(int(v) for v in (elem.get("rle") or "").split(","))
        except ValueError:
            raise ConversionError(f"{where}: malformed rle (not a list of integers)") from None
        if any(c < 0 for c in counts) or sum(counts) != box[2] * box[3]:
            raise ConversionError(
                f"{where}: malformed rle (run lengths sum to {sum(counts)}, box "
                f"{box[2]}x{box[3]} has {box[2] * box[3]} pixels)"
            )
        # CVAT masks are brush strokes: the COCO export marks them iscrowd=1, do the same.
        return Shape(kind="mask", mask_box=box, mask_counts=counts, iscrowd=True, **common)  # type: ignore[arg-type]
    if elem.tag == "box":
        return Shape(kind="box", **common)
    if elem.tag == "tag":
        return Shape(kind="tag", **common)
    return Shape(kind="unsupported", detail=elem.tag, **common)


def _merge_grouped_polygons(shapes: list[Shape], groups: Sequence[str | None]) -> list[Shape]:
    """Join the polygons of one CVAT group (same ``group_id`` and label) into one multi-part shape.

    CVAT's COCO export does the same (one annotation whose segmentation lists every part), so a
    region drawn in several pieces is one segment whichever format it comes from. The joined shape
    keeps the first part's id and order and the highest ``z_order`` of its parts.
    """
    merged: list[Shape] = []
    first_of_group: dict[tuple[str, str], int] = {}
    for shape, group in zip(shapes, groups, strict=True):
        if shape.kind != "polygon" or group in (None, "", "0"):
            merged.append(shape)
            continue
        key = (group, shape.label)
        if key not in first_of_group:
            first_of_group[key] = len(merged)
            merged.append(shape)
            continue
        head = merged[first_of_group[key]]
        merged[first_of_group[key]] = replace(
            head,
            polygons=head.polygons + shape.polygons,
            z_order=max(head.z_order or 0, shape.z_order or 0),
        )
    return merged


def _check_unique(
    record: ImageRecord, by_id: dict[str, ImageRecord], by_key: dict[str, ImageRecord], where: str
) -> None:
    """Refuse a second ``<image>`` with the same id or naming the same picture."""
    if record.image_id in by_id:
        other = by_id[record.image_id]
        raise ConversionError(f"{where}: duplicate image id (also used by {other.file_name})")
    if record.key in by_key:
        other = by_key[record.key]
        raise ConversionError(
            f"{where}: same picture as image {other.image_id}: a picture must be listed once"
        )
    by_id[record.image_id] = by_key[record.key] = record


def read_cvat_xml(xml_path: Path, extra_image_dirs: Sequence[Path] = ()) -> Export:
    """Read a CVAT for images 1.1 ``annotations.xml``.

    Raises:
        ConversionError: malformed XML, missing image attributes, duplicate image ids or
            pictures, bad or non-finite points, bad rle or mask box.
    """
    src = str(xml_path)
    if not xml_path.is_file():
        raise ConversionError(f"{src}: file not found")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise ConversionError(f"{src}: malformed XML ({err})") from err
    if root.tag != "annotations":
        raise ConversionError(f"{src}: not a CVAT XML file (root element <{root.tag}>)")
    if root.find("track") is not None:
        raise ConversionError(f"{src}: video tracks are not supported (export as 'CVAT for images 1.1')")

    labels: list[str] = []
    for name in root.iterfind("meta//labels/label/name"):
        if name.text and name.text not in labels:
            labels.append(name.text)

    search_dirs = (xml_path.parent / "images", xml_path.parent, *extra_image_dirs)
    images: list[ImageRecord] = []
    by_id: dict[str, ImageRecord] = {}
    by_key: dict[str, ImageRecord] = {}
    order = 0
    for img in root.iterfind("image"):
        where = f"{src}: image {img.get('id')} ({img.get('name')})"
        if not img.get("name") or img.get("id") is None:
            raise ConversionError(f"{where}: <image> needs 'id' and 'name'")
        record = ImageRecord(
            file_name=img.get("name", ""),
            width=_int_attr(img, "width", where),
            height=_int_attr(img, "height", where),
            image_id=img.get("id", ""),
            source=src,
            search_dirs=search_dirs,
        )
        if record.width <= 0 or record.height <= 0:
            raise ConversionError(f"{where}: non-positive size")
        _check_unique(record, by_id, by_key, where)
        groups: list[str | None] = []
        for index, elem in enumerate(e for e in img if e.tag not in _SKIPPED_ELEMENTS):
            shape = _parse_shape(elem, index, record, src, order)
            order += 1
            if shape.label not in labels:
                labels.append(shape.label)
            record.shapes.append(shape)
            groups.append(elem.get("group_id"))
        record.shapes = _merge_grouped_polygons(record.shapes, groups)
        images.append(record)
    return Export(source=src, labels=labels, images=images)
