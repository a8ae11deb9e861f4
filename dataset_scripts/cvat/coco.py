"""Read CVAT "COCO 1.0" exports (and the one-folder-per-class layout) into `cvat_records`.

Layouts:

* CVAT COCO 1.0: ``EXPORT/annotations/instances_<subset>.json`` with the pictures in
  ``EXPORT/images/`` (or ``EXPORT/images/<subset>/``).
* One folder per class (the construction-materials dataset): ``EXPORT/<class>/coco.json`` with
  ``EXPORT/<class>/images/``.

What is *not* trusted: ``bbox`` and ``area`` (recomputed from the final panoptic segments later).
What is checked here: the JSON structure, known image/category ids, RLE sizes against the image
size and uncompressed RLE run lengths summing to ``h * w``.
"""

from __future__ import annotations

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


def _parse_segmentation(seg: Any, image: ImageRecord, where: str) -> dict[str, Any]:
    """Shape fields (kind + geometry) of one COCO ``segmentation`` value."""
    if seg is None or (isinstance(seg, list) and len(seg) == 0):
        # CVAT writes rectangles as ``segmentation: []`` with only a bbox.
        return {"kind": "box"}
    if isinstance(seg, list):
        if all(_is_number(v) for v in seg):  # a flat polygon (not nested): accept it as one part
            seg = [seg]
        parts = []
        for part in seg:
            _require(
                isinstance(part, list) and all(_is_number(v) for v in part),
                f"{where}: malformed polygon (expected lists of numbers)",
            )
            parts.append(tuple(float(v) for v in part))
        return {"kind": "polygon", "polygons": tuple(parts)}
    if isinstance(seg, dict):
        counts, size = seg.get("counts"), seg.get("size")
        _require(
            isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size),
            f"{where}: malformed RLE (missing or bad 'size')",
        )
        _require(
            size == [image.height, image.width],
            f"{where}: RLE size {size[0]}x{size[1]} (h x w) does not match image "
            f"{image.file_name} ({image.height}x{image.width})",
        )
        if isinstance(counts, list):
            _require(
                all(isinstance(v, int) and v >= 0 for v in counts),
                f"{where}: malformed RLE (counts must be non-negative integers)",
            )
            _require(
                sum(counts) == size[0] * size[1],
                f"{where}: malformed RLE (run lengths sum to {sum(counts)}, image has "
                f"{size[0] * size[1]} pixels)",
            )
        else:
            _require(isinstance(counts, str), f"{where}: malformed RLE (counts must be a list or a string)")
        return {"kind": "rle", "rle": {"size": list(size), "counts": counts}}
    raise ConversionError(f"{where}: unsupported segmentation of type {type(seg).__name__}")


def read_coco_file(json_path: Path, search_dirs: Sequence[Path]) -> Export:
    """Read one COCO instances file.

    Args:
        json_path: The COCO JSON.
        search_dirs: Folders holding the pictures (tried in order).

    Raises:
        ConversionError: malformed structure, unknown image/category id, bad RLE.
    """
    try:
        data = load_json(json_path)
    except PanopticFormatError as err:
        raise ConversionError(str(err)) from err
    src = str(json_path)
    _require(isinstance(data, dict), f"{src}: not a COCO file (top level is not an object)")
    for key in ("images", "annotations", "categories"):
        _require(isinstance(data.get(key), list), f"{src}: not a COCO file (missing list '{key}')")

    categories: dict[Any, str] = {}
    labels: list[str] = []
    supercategories: dict[str, str] = {}
    for cat in data["categories"]:
        _require(
            isinstance(cat, dict) and "id" in cat and isinstance(cat.get("name"), str),
            f"{src}: malformed category {cat!r}",
        )
        categories[cat["id"]] = cat["name"]
        if cat["name"] not in labels:
            labels.append(cat["name"])
        if cat.get("supercategory"):
            supercategories[cat["name"]] = str(cat["supercategory"])

    images: dict[Any, ImageRecord] = {}
    for img in data["images"]:
        ok = isinstance(img, dict) and isinstance(img.get("file_name"), str) and "id" in img
        _require(ok, f"{src}: malformed image entry {str(img)[:80]}")
        where = f"{src}: image {img['id']} ({img['file_name']})"
        _require(
            isinstance(img.get("width"), int) and isinstance(img.get("height"), int),
            f"{where}: width/height missing or not integers",
        )
        _require(img["width"] > 0 and img["height"] > 0, f"{where}: non-positive size")
        _require(img["id"] not in images, f"{where}: duplicate image id")
        images[img["id"]] = ImageRecord(
            file_name=img["file_name"],
            width=img["width"],
            height=img["height"],
            image_id=str(img["id"]),
            source=src,
            search_dirs=tuple(search_dirs),
        )

    for order, ann in enumerate(data["annotations"]):
        _require(isinstance(ann, dict) and "id" in ann, f"{src}: annotation #{order} has no id")
        where = f"{src}: annotation {ann['id']}"
        image = images.get(ann.get("image_id"))
        _require(image is not None, f"{where}: unknown image_id {ann.get('image_id')}")
        label = categories.get(ann.get("category_id"))
        _require(label is not None, f"{where}: unknown category_id {ann.get('category_id')}")
        assert image is not None and label is not None
        fields = _parse_segmentation(ann.get("segmentation"), image, where)
        image.shapes.append(
            Shape(
                label=label,
                source=src,
                annotation_id=str(ann["id"]),
                order=order,
                z_order=None,  # COCO 1.0 loses CVAT's z_order
                iscrowd=bool(ann.get("iscrowd", 0)),
                occluded=bool((ann.get("attributes") or {}).get("occluded", False)),
                **fields,
            )
        )
    return Export(
        source=src, labels=labels, images=list(images.values()), label_supercategories=supercategories
    )


def read_coco_export(export_dir: Path, extra_image_dirs: Sequence[Path] = ()) -> list[Export]:
    """Read a CVAT COCO 1.0 export folder (every ``annotations/instances_*.json`` subset)."""
    files = sorted((export_dir / "annotations").glob("instances_*.json"))
    _require(bool(files), f"{export_dir}: no annotations/instances_*.json (not a CVAT COCO 1.0 export)")
    exports = []
    for json_path in files:
        subset = json_path.stem[len("instances_") :]
        dirs = [export_dir / "images" / subset, export_dir / "images", *extra_image_dirs]
        exports.append(read_coco_file(json_path, dirs))
    return exports


def read_per_class_export(root: Path, extra_image_dirs: Sequence[Path] = ()) -> list[Export]:
    """Read the one-folder-per-class layout: ``ROOT/<class>/coco.json`` + ``ROOT/<class>/images/``."""
    files = sorted(root.glob("*/coco.json"))
    _require(bool(files), f"{root}: no <class>/coco.json files")
    return [read_coco_file(f, [f.parent / "images", *extra_image_dirs]) for f in files]
