"""Write a task as CVAT's "COCO 1.0" export (``annotations/instances_default.json``).

What CVAT does and this writer copies: categories numbered from 1 in label creation order with an
empty supercategory, ``licenses``/``info`` blocks, per-image ``license``/``flickr_url``/
``coco_url``/``date_captured``, ``attributes.occluded`` on every annotation, brush masks as
``iscrowd: 1`` RLE, boxes as ``segmentation: []``, the z-order lost, and every third annotation
with a wrong ``bbox``/``area`` (cvat-ai/cvat#8307).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from dataset_scripts.sample.rle import uncompressed_rle
from dataset_scripts.sample.scene import Shape
from dataset_scripts.sample.task import TaskImage


def cvat_coco_skeleton(category_names: Sequence[str]) -> dict:
    """An empty CVAT COCO 1.0 document with categories numbered from 1 in the given order."""
    return {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {
            "contributor": "",
            "date_created": "",
            "description": "",
            "url": "",
            "version": "",
            "year": "",
        },
        "categories": [{"id": i, "name": n, "supercategory": ""} for i, n in enumerate(category_names, 1)],
        "images": [],
        "annotations": [],
    }


def shape_annotation(
    shape: Shape,
    ann_id: int,
    image_id: int,
    category_id: int,
    height: int,
    width: int,
    encoding: str = "polygon",
    corrupt_box: bool = False,
) -> dict:
    """One CVAT COCO 1.0 annotation of a shape.

    Args:
        shape: The region (polygons).
        ann_id, image_id, category_id: Ids of the export.
        height, width: Image size (upright).
        encoding: ``"polygon"`` (flat polygons, ``iscrowd: 0``), ``"rle"`` (CVAT brush mask:
            uncompressed RLE, ``iscrowd: 1``), ``"rle_string"`` (compressed-string RLE, crowd) or
            ``"box"`` (the region's box: ``segmentation: []``, area of the box).
        corrupt_box: Write a shifted ``bbox`` and the box's area, as CVAT sometimes does.

    Returns:
        The annotation dict in CVAT's key order.
    """
    rle = mask_utils.merge(mask_utils.frPyObjects(shape.polygons, height, width))
    area = float(mask_utils.area(rle))
    bbox = [round(float(v), 2) for v in mask_utils.toBbox(rle)]
    iscrowd = 0
    if encoding == "polygon":
        segmentation: list | dict = shape.polygons
    elif encoding == "rle":
        segmentation = uncompressed_rle(mask_utils.decode(rle).astype(bool))
        iscrowd = 1
    elif encoding == "rle_string":
        encoded = mask_utils.encode(np.asfortranarray(mask_utils.decode(rle)))
        segmentation = {"size": [height, width], "counts": encoded["counts"].decode("ascii")}
        iscrowd = 1
    elif encoding == "box":
        segmentation = []
        area = round(bbox[2] * bbox[3], 2)
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    if corrupt_box:
        bbox = [bbox[0] + 7.0, max(bbox[1] - 5.0, 0.0), round(bbox[2] * 0.6, 2), round(bbox[3] * 1.3, 2)]
        area = round(bbox[2] * bbox[3], 2)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "area": area,
        "bbox": bbox,
        "iscrowd": iscrowd,
        "attributes": {"occluded": False},
    }


def coco_image_entry(image_id: int, image: TaskImage) -> dict:
    """The ``images`` entry of one image, in CVAT's key order."""
    return {
        "id": image_id,
        "width": image.width,
        "height": image.height,
        "file_name": image.file_name,
        "license": 0,
        "flickr_url": "",
        "coco_url": "",
        "date_captured": 0,
    }


def coco_document(category_names: Sequence[str], images: Sequence[TaskImage]) -> dict:
    """The CVAT COCO 1.0 document of a task: images numbered from 1, annotations from 1 in order.

    Args:
        category_names: Labels of the task, in id order.
        images: The task's images and their annotations.
    """
    doc = cvat_coco_skeleton(category_names)
    cat_ids = {c["name"]: c["id"] for c in doc["categories"]}
    for image_id, image in enumerate(images, 1):
        doc["images"].append(coco_image_entry(image_id, image))
        for task_shape in image.shapes:
            ann_id = len(doc["annotations"]) + 1
            doc["annotations"].append(
                shape_annotation(
                    task_shape.shape,
                    ann_id,
                    image_id,
                    cat_ids[task_shape.shape.label],
                    image.height,
                    image.width,
                    encoding=task_shape.encoding,
                    corrupt_box=ann_id % 3 == 0,
                )
            )
    return doc
