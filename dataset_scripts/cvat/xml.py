"""Read CVAT's XML exports ("CVAT for images 1.1", "CVAT for video 1.1", task or project) into the
records of `dataset_scripts.cvat.records`.

Elements read per ``<image id name width height>`` (and per shape of a ``<track>``):

* ``<polygon points="x,y;x,y;...">`` -> a one-part polygon;
* ``<mask rle="..." left top width height>`` -> a CVAT brush mask: run lengths alternating
  0/1, starting with a run of 0s, row-major inside the ``width x height`` box at
  (``left``, ``top``); decoded by `decode_cvat_rle`;
* ``<ellipse cx cy rx ry [rotation]>`` -> an ellipse (an area shape, rotation in degrees);
* ``<box>`` (box-only) and ``<tag>`` (image-level) -> kept as records, reported and skipped later;
* anything else (``polyline``, ``points``, ``cuboid``, ``skeleton``) -> ``unsupported``.

Every shape keeps its ``z_order`` (higher on top) and ``occluded`` flag. Pictures are looked up in
``images/`` next to the XML, then next to the XML itself (names may contain folders).

A *project* export gives every ``<image>`` a ``subset`` and a ``task_id``: ids and names repeat
across tasks, so an image is identified by its subset and name, its id is unique only within its
task, and its picture is in ``images/<subset>/``.

A *video* export ("CVAT for video 1.1") has no ``<image>``: every ``<track>`` lists its shapes per
``frame`` (CVAT writes the interpolated frames too, used as written); a shape with
``outside="1"`` is not on that frame. Every frame with a visible shape becomes an image named like
CVAT names the frame's picture (``frame_000012.PNG``, in ``images/`` or ``images/<subset>/``), of
the task's ``<original_size>``.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dataset_scripts.cvat.records import ConversionError, Export, ImageRecord, Shape

_SKIPPED_ELEMENTS = {"attribute"}
# How CVAT names a video frame's picture (``dump_media_files``: the frame's path + the frame
# provider's extension, ``.PNG`` today); other spellings are tried when that file is absent.
FRAME_NAME = "frame_{:06d}"
FRAME_EXTENSIONS = (".PNG", ".png", ".jpg", ".jpeg", ".JPG")


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


def _float_attr(elem: ET.Element, name: str, where: str, default: float | None = None) -> float:
    value = elem.get(name)
    if value is None and default is not None:
        return default
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConversionError(f"{where}: attribute {name}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise ConversionError(f"{where}: attribute {name}={value!r} is not a finite number")
    return number


def _parse_ellipse(elem: ET.Element, where: str) -> tuple[float, float, float, float, float]:
    cx, cy, rx, ry = (_float_attr(elem, k, where) for k in ("cx", "cy", "rx", "ry"))
    if rx < 0 or ry < 0:
        raise ConversionError(f"{where}: ellipse radii rx={rx}, ry={ry} must not be negative")
    return cx, cy, rx, ry, _float_attr(elem, "rotation", where, default=0.0)


def _parse_shape(
    elem: ET.Element, label: str | None, annotation_id: str, where: str, src: str, order: int
) -> Shape:
    """One shape element as a `Shape` (``label`` is the element's, or its track's)."""
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
    if elem.tag == "ellipse":
        return Shape(kind="ellipse", ellipse=_parse_ellipse(elem, where), **common)
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
    record: ImageRecord, task: str, by_id: dict, by_key: dict[str, ImageRecord], where: str
) -> None:
    """Refuse a second ``<image>`` with the same id in one task, or naming the same picture."""
    if (task, record.image_id) in by_id:
        other = by_id[(task, record.image_id)]
        raise ConversionError(f"{where}: duplicate image id (also used by {other.file_name})")
    if record.key in by_key:
        other = by_key[record.key]
        raise ConversionError(
            f"{where}: same picture as image {other.image_id}: a picture must be listed once"
        )
    by_id[(task, record.image_id)] = by_key[record.key] = record


@dataclass(frozen=True)
class _TaskMeta:
    """What a video needs from ``<meta>``: its frame size, numbering and mode."""

    width: int | None
    height: int | None
    start_frame: int
    step: int
    mode: str


def _meta_int(elem: ET.Element | None, path: str, default: int | None) -> int | None:
    text = elem.findtext(path) if elem is not None else None
    try:
        return int(text) if text is not None and text.strip() else default
    except ValueError:
        return default


def _task_meta(task: ET.Element) -> _TaskMeta:
    step = re.search(r"step\s*=\s*(\d+)", task.findtext("frame_filter") or "")
    return _TaskMeta(
        width=_meta_int(task, "original_size/width", None),
        height=_meta_int(task, "original_size/height", None),
        start_frame=_meta_int(task, "start_frame", 0) or 0,
        step=max(1, int(step.group(1))) if step else 1,
        mode=(task.findtext("mode") or "interpolation").strip(),
    )


def _read_task_metas(root: ET.Element) -> dict[str, _TaskMeta]:
    """Per task id (``""`` for the one task of a task export), the meta of a video."""
    metas: dict[str, _TaskMeta] = {}
    task = root.find("meta/task")
    if task is not None:
        metas[""] = _task_meta(task)
    for task in root.iterfind("meta/project/tasks/task"):
        metas[(task.findtext("id") or "").strip()] = _task_meta(task)
    return metas


def _read_tracks(
    root: ET.Element, src: str, search_dirs: Sequence[Path], first_order: int
) -> list[ImageRecord]:
    """One image per (task, frame) with a visible track shape, shapes in file order."""
    metas = _read_task_metas(root)
    frames: dict[tuple[str, int], ImageRecord] = {}
    groups: dict[tuple[str, int], list[str | None]] = {}
    order = first_order
    for track in root.iterfind("track"):
        track_id, task = track.get("id", "?"), track.get("task_id", "")
        subset = track.get("subset", "")
        meta = metas.get(task) or metas.get("") or _TaskMeta(None, None, 0, 1, "interpolation")
        where_track = f"{src}: track {track_id}"
        if meta.mode == "annotation":
            raise ConversionError(
                f"{where_track}: a 'CVAT for video' export of an image task does not name its pictures; "
                "export the task as 'CVAT for images 1.1'"
            )
        for elem in track:
            if elem.tag in _SKIPPED_ELEMENTS:
                continue
            frame = _int_attr(elem, "frame", f"{where_track} <{elem.tag}>")
            where = f"{src}: image {frame} (track {track_id}) {elem.tag}"
            if elem.get("outside") == "1":  # the object is not on this frame
                continue
            if frame < 0:
                raise ConversionError(f"{where}: negative frame number")
            name = FRAME_NAME.format(frame)
            record = frames.get((task, frame))
            if record is None:
                if not (meta.width and meta.height and meta.width > 0 and meta.height > 0):
                    raise ConversionError(
                        f"{where}: the task's frame size (<meta> ... <original_size>) is missing or not positive"
                    )
                record = frames[(task, frame)] = ImageRecord(
                    file_name=name + FRAME_EXTENSIONS[0],
                    width=meta.width,
                    height=meta.height,
                    image_id=str(frame),
                    source=src,
                    search_dirs=_search_dirs(search_dirs, subset),
                    subset=subset,
                    alternates=tuple(name + ext for ext in FRAME_EXTENSIONS[1:]),
                    sequence=f"{src}#task{task}" if task else src,
                    frame_index=(frame - meta.start_frame) // meta.step,
                )
                groups[(task, frame)] = []
            annotation_id = f"{frame}/track{track_id}/{elem.tag}"
            record.shapes.append(_parse_shape(elem, track.get("label"), annotation_id, where, src, order))
            groups[(task, frame)].append(track.get("group_id"))
            order += 1
    for task_frame, record in frames.items():
        record.shapes = _merge_grouped_polygons(record.shapes, groups[task_frame])
    return [frames[k] for k in sorted(frames)]


def _search_dirs(base: Sequence[Path], subset: str) -> tuple[Path, ...]:
    """A project export puts pictures in ``images/<subset>/``; a task export in ``images/``."""
    images = base[0]
    return ((images / subset,) if subset else ()) + tuple(base)


def read_cvat_xml(xml_path: Path, extra_image_dirs: Sequence[Path] = ()) -> Export:
    """Read a CVAT for images / for video 1.1 ``annotations.xml`` (task or project export).

    Raises:
        ConversionError: malformed XML, missing image attributes, duplicate image ids or
            pictures, bad or non-finite points or ellipse values, bad rle or mask box, a video
            without its frame size.
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

    labels: list[str] = []
    for name in root.iterfind("meta//labels/label/name"):
        if name.text and name.text not in labels:
            labels.append(name.text)

    search_dirs = (xml_path.parent / "images", xml_path.parent, *extra_image_dirs)
    images: list[ImageRecord] = []
    by_id: dict[tuple[str, str], ImageRecord] = {}
    by_key: dict[str, ImageRecord] = {}
    order = 0
    for img in root.iterfind("image"):
        where = f"{src}: image {img.get('id')} ({img.get('name')})"
        if not img.get("name") or img.get("id") is None:
            raise ConversionError(f"{where}: <image> needs 'id' and 'name'")
        subset = img.get("subset", "")
        record = ImageRecord(
            file_name=img.get("name", ""),
            width=_int_attr(img, "width", where),
            height=_int_attr(img, "height", where),
            image_id=img.get("id", ""),
            source=src,
            search_dirs=_search_dirs(search_dirs, subset),
            subset=subset,
        )
        if not subset and not Path(record.file_name).suffix:
            # A video task exported as "CVAT for images" names its frames without the extension.
            record.alternates = tuple(record.file_name + ext for ext in FRAME_EXTENSIONS)
        if record.width <= 0 or record.height <= 0:
            raise ConversionError(f"{where}: non-positive size")
        task = img.get("task_id", "")
        if task:
            where = f"{src}: image {record.image_id} of task {task} ({record.file_name})"
        _check_unique(record, task, by_id, by_key, where)
        groups: list[str | None] = []
        for index, elem in enumerate(e for e in img if e.tag not in _SKIPPED_ELEMENTS):
            annotation_id = f"{record.image_id}/{elem.tag}#{index}"
            if task:
                annotation_id = f"task{task}/{annotation_id}"
            shape = _parse_shape(
                elem, elem.get("label"), annotation_id, f"{where} {elem.tag} #{index}", src, order
            )
            order += 1
            record.shapes.append(shape)
            groups.append(elem.get("group_id"))
        record.shapes = _merge_grouped_polygons(record.shapes, groups)
        images.append(record)
    images += _read_tracks(root, src, search_dirs, order)
    for record in images:
        for shape in record.shapes:
            if shape.label not in labels:
                labels.append(shape.label)
    return Export(source=src, labels=labels, images=images)
