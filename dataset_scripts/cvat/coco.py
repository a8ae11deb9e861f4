"""Read CVAT "COCO 1.0" exports (and the one-folder-per-class layout) into the records of
`dataset_scripts.cvat.records`.

Layouts:

* CVAT COCO 1.0: ``EXPORT/annotations/instances_<subset>.json`` with the pictures in
  ``EXPORT/images/`` (or ``EXPORT/images/<subset>/``); a project export has one file per subset
  and its images are identified by subset and name.
* One folder per class (the construction-materials dataset): ``EXPORT/<class>/coco.json`` with
  ``EXPORT/<class>/images/``.

What is *not* trusted: ``bbox`` and ``area`` (recomputed from the final panoptic segments later).
What is checked here: the JSON structure and value types, known and unique image/category ids,
one image entry per picture, finite polygon coordinates, RLE sizes against the image size and
RLE run lengths (uncompressed lists and decoded compressed strings) summing to ``h * w``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from dataset_scripts.cvat.records import ConversionError, Export, ImageRecord, Shape
from dataset_scripts.panoptic_format import PanopticFormatError, load_json


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConversionError(message)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    """COCO ids are integers; strings are tolerated (hand-made files), nothing else is hashable-safe."""
    return _is_int(value) or isinstance(value, str)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def decode_rle_string(counts: str, where: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``, checked).

    Raises:
        ConversionError: a character outside the encoding, a truncated or over-long number,
            or a negative run.
    """
    runs: list[int] = []
    value = shift = 0
    for char in counts:
        code = ord(char) - 48
        if not 0 <= code < 64 or shift > 60:
            raise ConversionError(f"{where}: malformed compressed RLE (bad character or run)")
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift  # sign extension of the last 5-bit group
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ConversionError(f"{where}: malformed compressed RLE (negative run length)")
        runs.append(value)
        value = shift = 0
    if shift:
        raise ConversionError(f"{where}: malformed compressed RLE (truncated)")
    return runs


def _check_finite_polygon(seg: Any, where: str) -> tuple[tuple[float, ...], ...]:
    if all(_is_number(v) for v in seg):  # a flat polygon (not nested): accept it as one part
        seg = [seg]
    parts = []
    for part in seg:
        _require(
            isinstance(part, list) and all(_is_number(v) for v in part),
            f"{where}: malformed polygon (expected lists of numbers)",
        )
        _require(
            all(math.isfinite(v) for v in part),
            f"{where}: polygon has a non-finite coordinate (NaN or infinity)",
        )
        parts.append(tuple(float(v) for v in part))
    return tuple(parts)


def _parse_rle(seg: dict, image: ImageRecord, where: str) -> dict[str, Any]:
    counts, size = seg.get("counts"), seg.get("size")
    _require(
        isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size),
        f"{where}: malformed RLE (missing or bad 'size')",
    )
    _require(
        size == [image.height, image.width],
        f"{where}: RLE size {size[0]}x{size[1]} (h x w) does not match image "
        f"{image.file_name} ({image.height}x{image.width})",
    )
    if isinstance(counts, str):
        counts = decode_rle_string(counts, where)
    _require(
        isinstance(counts, list) and all(_is_int(v) and v >= 0 for v in counts),
        f"{where}: malformed RLE (counts must be a string or a list of non-negative integers)",
    )
    _require(
        sum(counts) == size[0] * size[1],
        f"{where}: malformed RLE (run lengths sum to {sum(counts)}, image has {size[0] * size[1]} pixels)",
    )
    # Kept uncompressed: the check above is the only validation pycocotools would not do.
    return {"kind": "rle", "rle": {"size": list(size), "counts": counts}}


def _parse_segmentation(seg: Any, image: ImageRecord, where: str) -> dict[str, Any]:
    """Shape fields (kind + geometry) of one COCO ``segmentation`` value."""
    if seg is None or (isinstance(seg, list) and len(seg) == 0):
        # CVAT writes rectangles as ``segmentation: []`` with only a bbox.
        return {"kind": "box"}
    if isinstance(seg, list):
        return {"kind": "polygon", "polygons": _check_finite_polygon(seg, where)}
    if isinstance(seg, dict):
        return _parse_rle(seg, image, where)
    raise ConversionError(f"{where}: unsupported segmentation of type {_type_name(seg)}")


def _read_categories(data: dict, src: str) -> tuple[dict[Any, str], list[str], dict[str, str]]:
    categories: dict[Any, str] = {}
    labels: list[str] = []
    supercategories: dict[str, str] = {}
    for cat in data["categories"]:
        _require(
            isinstance(cat, dict) and _is_id(cat.get("id")) and isinstance(cat.get("name"), str),
            f"{src}: malformed category {str(cat)[:80]} (needs an integer 'id' and a string 'name')",
        )
        _require(cat["id"] not in categories, f"{src}: category id {cat['id']} is declared twice")
        categories[cat["id"]] = cat["name"]
        if cat["name"] not in labels:
            labels.append(cat["name"])
        if cat.get("supercategory"):
            supercategories[cat["name"]] = str(cat["supercategory"])
    return categories, labels, supercategories


def _read_images(data: dict, src: str, search_dirs: Sequence[Path], subset: str) -> dict[Any, ImageRecord]:
    images: dict[Any, ImageRecord] = {}
    by_key: dict[str, ImageRecord] = {}
    for img in data["images"]:
        ok = isinstance(img, dict) and isinstance(img.get("file_name"), str) and _is_id(img.get("id"))
        _require(
            ok, f"{src}: malformed image entry {str(img)[:80]} (needs an integer 'id' and a 'file_name')"
        )
        where = f"{src}: image {img['id']} ({img['file_name']})"
        _require(bool(img["file_name"].strip()), f"{where}: empty file_name")
        _require(
            _is_int(img.get("width")) and _is_int(img.get("height")),
            f"{where}: width/height missing or not integers",
        )
        _require(img["width"] > 0 and img["height"] > 0, f"{where}: non-positive size")
        _require(img["id"] not in images, f"{where}: duplicate image id")
        record = ImageRecord(
            file_name=img["file_name"],
            width=img["width"],
            height=img["height"],
            image_id=str(img["id"]),
            source=src,
            search_dirs=tuple(search_dirs),
            subset=subset,
        )
        other = by_key.get(record.key)
        _require(
            other is None,
            f"{where}: same picture as image {other.image_id if other else ''}: a picture must be listed once",
        )
        images[img["id"]] = by_key[record.key] = record
    return images


def _annotation_shape(ann: Any, order: int, src: str, images: dict, categories: dict) -> Shape:
    _require(
        isinstance(ann, dict) and _is_id(ann.get("id")), f"{src}: annotation #{order} has no integer 'id'"
    )
    where = f"{src}: annotation {ann['id']}"
    image_id, category_id = ann.get("image_id"), ann.get("category_id")
    _require(_is_id(image_id), f"{where}: image_id must be an integer, got {_type_name(image_id)}")
    image = images.get(image_id)
    if image is None:
        raise ConversionError(f"{where}: unknown image_id {image_id!r}")
    where = f"{src}: image {image.image_id} ({image.file_name}), annotation {ann['id']}"
    _require(_is_id(category_id), f"{where}: category_id must be an integer, got {_type_name(category_id)}")
    label = categories.get(category_id)
    if label is None:
        raise ConversionError(f"{where}: unknown category_id {category_id!r}")
    iscrowd, attributes = ann.get("iscrowd", 0), ann.get("attributes") or {}
    _require(iscrowd in (0, 1, None), f"{where}: iscrowd must be 0 or 1, got {str(iscrowd)[:20]}")
    _require(isinstance(attributes, dict), f"{where}: attributes must be an object")
    fields = _parse_segmentation(ann.get("segmentation"), image, where)
    shape = Shape(
        label=label,
        source=src,
        annotation_id=str(ann["id"]),
        order=order,
        z_order=None,  # COCO 1.0 loses CVAT's z_order
        iscrowd=bool(iscrowd),
        occluded=bool(attributes.get("occluded", False)),
        **fields,
    )
    image.shapes.append(shape)
    return shape


def read_coco_file(json_path: Path, search_dirs: Sequence[Path], subset: str = "") -> Export:
    """Read one COCO instances file.

    Args:
        json_path: The COCO JSON.
        search_dirs: Folders holding the pictures (tried in order).
        subset: The CVAT subset the file holds (``instances_<subset>.json``): part of every
            image's identity, so that ``a.png`` of ``Train`` and of ``Test`` stay two images.

    Raises:
        ConversionError: malformed structure or value types, unknown or duplicate image/category
            id, a picture listed twice, non-finite polygon coordinates, bad RLE. The message names
            the file, the image and the annotation.
    """
    try:
        data = load_json(json_path)
    except PanopticFormatError as err:
        raise ConversionError(str(err)) from err
    except OSError as err:  # a folder named like the file, a file that cannot be read
        raise ConversionError(f"{json_path}: cannot read ({err.strerror or err})") from None
    except (RecursionError, ValueError) as err:  # absurd nesting, integers of thousands of digits
        raise ConversionError(f"{json_path}: malformed JSON ({type(err).__name__})") from None
    src = str(json_path)
    _require(isinstance(data, dict), f"{src}: not a COCO file (top level is not an object)")
    for key in ("images", "annotations", "categories"):
        _require(isinstance(data.get(key), list), f"{src}: not a COCO file (missing list '{key}')")
    categories, labels, supercategories = _read_categories(data, src)
    images = _read_images(data, src, search_dirs, subset)
    for order, ann in enumerate(data["annotations"]):
        _annotation_shape(ann, order, src, images, categories)
    return Export(
        source=src, labels=labels, images=list(images.values()), label_supercategories=supercategories
    )


def coco_subset(json_path: Path) -> str:
    """The CVAT subset of ``instances_<subset>.json`` (``""`` for another file name)."""
    stem = json_path.stem
    return stem[len("instances_") :] if stem.startswith("instances_") else ""


def read_coco_export(export_dir: Path, extra_image_dirs: Sequence[Path] = ()) -> list[Export]:
    """Read a CVAT COCO 1.0 export folder (every ``annotations/instances_<subset>.json``).

    A task export has one subset (``default``, pictures in ``images/`` or ``images/default/``); a
    project export has one file per subset (``instances_Train.json``...), pictures in
    ``images/<subset>/``.
    """
    files = sorted((export_dir / "annotations").glob("instances_*.json"))
    _require(bool(files), f"{export_dir}: no annotations/instances_*.json (not a CVAT COCO 1.0 export)")
    exports = []
    for json_path in files:
        subset = coco_subset(json_path)
        dirs = [export_dir / "images" / subset, export_dir / "images", *extra_image_dirs]
        exports.append(read_coco_file(json_path, dirs, subset))
    return exports


def read_per_class_export(root: Path, extra_image_dirs: Sequence[Path] = ()) -> list[Export]:
    """Read the one-folder-per-class layout: ``ROOT/<class>/coco.json`` + ``ROOT/<class>/images/``."""
    files = sorted(root.glob("*/coco.json"))
    _require(bool(files), f"{root}: no <class>/coco.json files")
    return [read_coco_file(f, [f.parent / "images", *extra_image_dirs]) for f in files]
