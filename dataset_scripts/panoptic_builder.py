"""A `datasets` builder over a COCO-panoptic folder, with its category table in the features.

Input (the converter's output)::

    DIR/annotations/panoptic_{split}.json     images, annotations[segments_info], categories
    DIR/annotations/panoptic_{split}/<stem>.png
    DIR/{split}/<image file>

for the splits among ``train``, ``val``, ``test`` that are present. One row per image:

* ``image``: `datasets.Image` (decoded as RGB, EXIF orientation applied),
* ``panoptic``: `datasets.Image`, the RGB PNG whose pixels encode ``id = R + 256 G + 256^2 B``,
* ``segments_info``: list of ``{id, category_id, iscrowd, area, bbox [x, y, w, h]}``,
* ``image_id``, ``file_name``, ``width``, ``height``.

Where the categories travel: a dataset must carry its category names, thing/stuff flags and
colours so that training needs nothing else. `DatasetInfo.description` survives
``save_to_disk`` but not a Parquet push (only the features are written to Parquet metadata and
to the Hub card's YAML). So the table is stored as the ``id`` field (a free string datasets keeps
with every feature) of the ``segments_info.category_id`` feature, as JSON; it survives
``save_to_disk``/``load_from_disk``, ``map``, Parquet and ``push_to_hub``. `load_categories`
reads it back. The description repeats it in words for people.

datasets 5 has no loading scripts: use the class directly (`build_hf_dataset` does)::

    builder = PanopticFolderBuilder(data_dir="outputs/sample_panoptic")
    builder.download_and_prepare()
    dsd = builder.as_dataset()
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from dataset_scripts.panoptic_format import PanopticFormatError, load_panoptic_json

SPLITS = ("train", "val", "test")
CATEGORIES_FORMAT = "detr-panoptic/categories/v1"


def split_json_path(panoptic_dir: Path, split: str) -> Path:
    return panoptic_dir / "annotations" / f"panoptic_{split}.json"


def present_splits(panoptic_dir: str | os.PathLike) -> list[str]:
    """Splits of a COCO-panoptic folder, in train/val/test order.

    Raises:
        FileNotFoundError: the folder is missing or holds no ``annotations/panoptic_{split}.json``.
    """
    panoptic_dir = Path(panoptic_dir)
    if not panoptic_dir.is_dir():
        raise FileNotFoundError(f"COCO-panoptic folder not found: {panoptic_dir}")
    splits = [s for s in SPLITS if split_json_path(panoptic_dir, s).is_file()]
    if not splits:
        expected = ", ".join(str(split_json_path(panoptic_dir, s)) for s in SPLITS)
        raise FileNotFoundError(f"{panoptic_dir} is not a COCO-panoptic folder: none of {expected} exists")
    return splits


def normalize_categories(categories: list[dict[str, Any]], source: Path) -> list[dict[str, Any]]:
    """``[{id, name, isthing: bool, color: [r, g, b]}]`` in the JSON's order; errors name `source`."""
    out = []
    for cat in categories:
        try:
            color = [int(c) for c in cat["color"]]
            out.append(
                {
                    "id": int(cat["id"]),
                    "name": str(cat["name"]),
                    "isthing": bool(cat["isthing"]),
                    "color": color,
                }
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PanopticFormatError(
                f"{source}: category {cat!r} lacks a valid id/name/isthing/color"
            ) from err
        if len(color) != 3:
            raise PanopticFormatError(f"{source}: category {cat['id']} color must be [r, g, b]")
    ids = [c["id"] for c in out]
    if len(set(ids)) != len(ids):
        raise PanopticFormatError(f"{source}: duplicate category ids")
    if not out:
        raise PanopticFormatError(f"{source}: no categories")
    return out


def read_split_categories(panoptic_dir: Path, splits: list[str]) -> list[dict[str, Any]]:
    """The category table, identical in every split's JSON (else an error naming both files)."""
    first: list[dict[str, Any]] | None = None
    first_path: Path | None = None
    for split in splits:
        path = split_json_path(panoptic_dir, split)
        cats = normalize_categories(load_panoptic_json(path)["categories"], path)
        if first is None:
            first, first_path = cats, path
        elif cats != first:
            raise PanopticFormatError(f"{path}: categories differ from those of {first_path}")
    if first is None:
        raise PanopticFormatError(f"{panoptic_dir}: no split to read the categories from")
    return first


def folder_fingerprint(panoptic_dir: str | os.PathLike) -> str:
    """Hash of the JSONs' bytes and every data file's name, size and mtime: a changed folder gets
    a fresh cache entry instead of a stale prepared dataset."""
    panoptic_dir = Path(panoptic_dir)
    digest = hashlib.sha256()
    for split in present_splits(panoptic_dir):
        digest.update(split_json_path(panoptic_dir, split).read_bytes())
        for folder in (panoptic_dir / "annotations" / f"panoptic_{split}", panoptic_dir / split):
            if folder.is_dir():
                for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                    stat = entry.stat()
                    digest.update(f"{folder.name}/{entry.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def panoptic_features(categories: list[dict[str, Any]]) -> datasets.Features:
    """The row features of interface 2; the category table rides on ``segments_info.category_id``."""
    table = json.dumps({"format": CATEGORIES_FORMAT, "categories": categories}, separators=(",", ":"))
    return datasets.Features(
        {
            "image": datasets.Image(mode="RGB"),
            "panoptic": datasets.Image(),
            "segments_info": datasets.List(
                {
                    "id": datasets.Value("int64"),
                    "category_id": datasets.Value("int64", id=table),
                    "iscrowd": datasets.Value("int64"),
                    "area": datasets.Value("int64"),
                    "bbox": datasets.List(datasets.Value("float32"), length=4),
                }
            ),
            "image_id": datasets.Value("int64"),
            "file_name": datasets.Value("string"),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
        }
    )


def _categories_from_features(features: datasets.Features | None) -> list[dict[str, Any]] | None:
    try:
        table = features["segments_info"].feature["category_id"].id  # type: ignore[index,union-attr]
    except (KeyError, TypeError, AttributeError):
        return None
    if not table:
        return None
    payload = json.loads(table)
    if payload.get("format") != CATEGORIES_FORMAT:
        return None
    return [dict(c) for c in payload["categories"]]


def load_categories(dataset: datasets.Dataset | datasets.DatasetDict) -> list[dict[str, Any]]:
    """The category table of a dataset built by `PanopticFolderBuilder`.

    Args:
        dataset: A `Dataset`, `DatasetDict` (all splits must agree) or `IterableDataset`, also
            after ``save_to_disk``/``load_from_disk`` or a Parquet round trip.

    Returns:
        ``[{"id": int, "name": str, "isthing": bool, "color": [r, g, b]}]`` in the panoptic
        JSON's order (model labels are the positions in this list).

    Raises:
        ValueError: the dataset carries no category table (its ``segments_info.category_id``
            feature was replaced, e.g. by a cast) or its splits disagree.
    """
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        tables = {name: load_categories(split) for name, split in dataset.items()}
        if not tables:
            raise ValueError("empty DatasetDict: no split to read categories from")
        first_name, first = next(iter(tables.items()))
        for name, table in tables.items():
            if table != first:
                raise ValueError(f"splits '{first_name}' and '{name}' carry different category tables")
        return first
    categories = _categories_from_features(dataset.features)
    if categories is None:
        raise ValueError(
            "this dataset carries no category table in its segments_info.category_id feature; "
            "build it with dataset_scripts/panoptic_builder.py (and do not cast that column)"
        )
    return categories


def _check_row_fields(image: dict[str, Any], ann: dict[str, Any] | None, json_path: Path) -> None:
    """The fields a row needs beyond `load_panoptic_json`'s checks: integer image id, width and
    height, a ``file_name``, and each segment's ``area`` and 4-number ``bbox``.

    Raises:
        PanopticFormatError: naming the file, the image and the segment.
    """
    for key in ("id", "width", "height"):
        if not isinstance(image.get(key), int) or isinstance(image.get(key), bool):
            raise PanopticFormatError(
                f"{json_path}: image {image.get('id')} has {key} {json.dumps(image.get(key))}, expected an integer"
            )
    if not isinstance(image.get("file_name"), str) or not image["file_name"]:
        raise PanopticFormatError(f"{json_path}: image {image['id']} has no file_name")
    for seg in [] if ann is None else ann.get("segments_info", []):
        bbox = seg.get("bbox")
        if "area" not in seg or not (
            isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
        ):
            raise PanopticFormatError(
                f"{json_path}: image {image['id']} segment {seg['id']} needs an area and a bbox [x, y, w, h], "
                f"got area {json.dumps(seg.get('area'))}, bbox {json.dumps(bbox)}"
            )


class PanopticFolderBuilder(datasets.GeneratorBasedBuilder):
    """`GeneratorBasedBuilder` over a COCO-panoptic folder given as ``data_dir``.

    The cache key includes `folder_fingerprint`, so editing the folder rebuilds the dataset.
    """

    VERSION = datasets.Version("1.0.0")

    def __init__(self, *args: Any, data_dir: str | os.PathLike | None = None, **kwargs: Any) -> None:
        if data_dir is None:
            raise ValueError("PanopticFolderBuilder needs data_dir=<COCO-panoptic folder>")
        data_dir = str(Path(data_dir).resolve())
        kwargs.setdefault("hash", folder_fingerprint(data_dir))
        kwargs.setdefault("dataset_name", "panoptic_folder")
        super().__init__(*args, data_dir=data_dir, **kwargs)

    @property
    def panoptic_dir(self) -> Path:
        return Path(self.config.data_dir)

    def _info(self) -> datasets.DatasetInfo:
        splits = present_splits(self.panoptic_dir)
        categories = read_split_categories(self.panoptic_dir, splits)
        things = [c["name"] for c in categories if c["isthing"]]
        stuff = [c["name"] for c in categories if not c["isthing"]]
        description = (
            f"COCO-panoptic dataset '{self.panoptic_dir.name}' ({', '.join(splits)}); "
            f"things: {', '.join(things) or '-'}; stuff: {', '.join(stuff) or '-'}. "
            "Category table: dataset_scripts.panoptic_builder.load_categories(dataset)."
        )
        return datasets.DatasetInfo(description=description, features=panoptic_features(categories))

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        generators = []
        for split in present_splits(self.panoptic_dir):
            examples = self._check_split(split)
            generators.append(datasets.SplitGenerator(name=split, gen_kwargs={"examples": examples}))
        return generators

    def _check_split(self, split: str) -> list[dict[str, Any]]:
        """Every image of a split with its annotation, files checked before anything is written.

        Raises:
            FileNotFoundError: an image or PNG is missing (named).
            PanopticFormatError: an image has no or two annotations.
        """
        json_path = split_json_path(self.panoptic_dir, split)
        data = load_panoptic_json(json_path)
        by_image: dict[int, dict[str, Any]] = {}
        for ann in data["annotations"]:
            if ann["image_id"] in by_image:
                raise PanopticFormatError(f"{json_path}: image {ann['image_id']} has two annotations")
            by_image[ann["image_id"]] = ann
        examples = []
        for image in data["images"]:
            _check_row_fields(image, by_image.get(image["id"]), json_path)
            ann = by_image.get(image["id"])
            if ann is None:
                raise PanopticFormatError(
                    f"{json_path}: image {image['id']} ({image['file_name']}) has no annotation"
                )
            image_path = self.panoptic_dir / split / image["file_name"]
            png_path = self.panoptic_dir / "annotations" / f"panoptic_{split}" / ann["file_name"]
            for path, what in ((image_path, "image"), (png_path, "panoptic PNG")):
                if not path.is_file():
                    raise FileNotFoundError(f"{json_path}: {what} of image {image['id']} not found: {path}")
            examples.append(
                {"image": image, "annotation": ann, "image_path": image_path, "png_path": png_path}
            )
        return examples

    def _generate_examples(self, examples: list[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
        for example in examples:
            image, ann = example["image"], example["annotation"]
            segments = [
                {
                    "id": int(seg["id"]),
                    "category_id": int(seg["category_id"]),
                    "iscrowd": int(seg.get("iscrowd", 0)),
                    "area": int(seg["area"]),
                    "bbox": [float(v) for v in seg["bbox"]],
                }
                for seg in ann.get("segments_info", [])
            ]
            # Bytes, not paths: the prepared Arrow files must not depend on the folder staying put.
            yield (
                int(image["id"]),
                {
                    "image": {"bytes": example["image_path"].read_bytes(), "path": image["file_name"]},
                    "panoptic": {"bytes": example["png_path"].read_bytes(), "path": ann["file_name"]},
                    "segments_info": segments,
                    "image_id": int(image["id"]),
                    "file_name": str(image["file_name"]),
                    "width": int(image["width"]),
                    "height": int(image["height"]),
                },
            )


def build_hf_dataset(
    panoptic_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> datasets.DatasetDict:
    """Prepare and load a COCO-panoptic folder as a `DatasetDict` keyed by the folder's split names
    (``train``, ``val``, ``test``: those present).

    Args:
        panoptic_dir: The COCO-panoptic folder.
        cache_dir: Where the prepared Arrow files go (default: the datasets cache).

    Raises:
        FileNotFoundError, PanopticFormatError: the folder is not a valid COCO-panoptic folder
            (the message names the file).
    """
    builder = PanopticFolderBuilder(
        data_dir=panoptic_dir, cache_dir=None if cache_dir is None else str(cache_dir)
    )
    builder.download_and_prepare()
    return builder.as_dataset()
