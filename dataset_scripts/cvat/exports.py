"""Recognise an export's layout, read it with the right reader and merge several exports.

Images of several exports are merged by their key (the relative path of the picture inside its
export, `ImageRecord.key`): the same picture in two exports gets the annotations of both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from dataset_scripts.cvat.coco import coco_subset, read_coco_export, read_coco_file, read_per_class_export
from dataset_scripts.cvat.records import ConversionError, Export, ImageRecord
from dataset_scripts.cvat.xml import read_cvat_xml


def read_export(path: Path, extra_image_dirs: Sequence[Path] = ()) -> list[Export]:
    """Read one export, recognising its layout.

    Layouts: ``annotations.xml`` (CVAT for images / for video 1.1, task or project),
    ``annotations/instances_*.json`` (COCO 1.0, task or project), ``<class>/coco.json`` (one COCO file per class), or a ``.xml``/``.json`` file.

    Raises:
        ConversionError: the path does not exist or is no known layout, or the reader refuses it.
    """
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: export not found")
    if path.is_file():
        if path.suffix.lower() == ".xml":
            return [read_cvat_xml(path, extra_image_dirs)]
        if path.suffix.lower() == ".json":
            subset = coco_subset(path)
            dirs = [path.parent / "images", path.parent.parent / "images", *extra_image_dirs]
            if subset:
                dirs.insert(0, path.parent.parent / "images" / subset)
            return [read_coco_file(path, dirs, subset)]
        raise ConversionError(f"{path}: expected an .xml or .json annotation file")
    if (path / "annotations.xml").is_file():
        return [read_cvat_xml(path / "annotations.xml", extra_image_dirs)]
    if (path / "annotations").is_dir() and any((path / "annotations").glob("instances_*.json")):
        return read_coco_export(path, extra_image_dirs)
    if any(path.glob("*/coco.json")):
        return read_per_class_export(path, extra_image_dirs)
    raise ConversionError(
        f"{path}: not a CVAT export (expected annotations.xml, annotations/instances_*.json or <class>/coco.json)"
    )


def merge_images(exports: Sequence[Export]) -> dict[str, ImageRecord]:
    """Merge the images of several exports by key (annotations of both are kept).

    Shapes get a global ``order`` (export order, then file order) for ``--overlap order``.

    Raises:
        ConversionError: the same picture with two different sizes.
    """
    merged: dict[str, ImageRecord] = {}
    order = 0
    for export in exports:
        for image in export.images:
            shapes = []
            for shape in image.shapes:
                shapes.append(dataclasses.replace(shape, order=order))
                order += 1
            seen = merged.get(image.key)
            if seen is None:
                merged[image.key] = dataclasses.replace(image, shapes=shapes)
                continue
            if (seen.width, seen.height) != (image.width, image.height):
                raise ConversionError(
                    f"{image.source}: image {image.image_id} ({image.file_name}) is {image.width}x{image.height} "
                    f"but {seen.source} lists the same file name as {seen.width}x{seen.height}"
                )
            seen.shapes.extend(shapes)
            seen.search_dirs = tuple(dict.fromkeys((*seen.search_dirs, *image.search_dirs)))
    return merged
