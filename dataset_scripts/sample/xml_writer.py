"""Write a task as CVAT's "CVAT for images 1.1" export (``annotations.xml``).

What CVAT does and this writer copies: ``<meta><task>`` with the labels in creation order; one
``<image id name width height>`` per frame (ids from 0); polygons as ``points="x,y;x,y;..."`` with
2 decimals; a multi-part region as one ``<polygon>`` per part sharing a ``group_id`` (CVAT's COCO
export merges such a group into one multi-part annotation); brush masks as
``<mask rle left top width height>`` (row-major runs inside the mask's tight box, from a run of
0s); boxes as ``<box xtl ytl xbr ybr>``; every shape with its ``z_order``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

import numpy as np

from dataset_scripts.sample.geometry import polygon_mask
from dataset_scripts.sample.rle import cvat_mask_rle
from dataset_scripts.sample.task import TaskImage, TaskShape


def _points(part: Sequence[float]) -> str:
    return ";".join(f"{x:.2f},{y:.2f}" for x, y in zip(part[0::2], part[1::2], strict=True))


def _common(task_shape: TaskShape) -> dict[str, str]:
    return {"label": task_shape.shape.label, "source": "manual", "occluded": "0"}


def _mask_element(task_shape: TaskShape, mask: np.ndarray) -> ET.Element:
    """``<mask>`` of a non-empty ``(H, W)`` bool mask: its tight box and the runs inside it."""
    ys, xs = np.nonzero(mask)
    top, left, bottom, right = int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1
    runs = cvat_mask_rle(mask[top:bottom, left:right])
    attrs = {
        **_common(task_shape),
        "rle": ", ".join(map(str, runs)),
        "left": str(left),
        "top": str(top),
        "width": str(right - left),
        "height": str(bottom - top),
        "z_order": str(task_shape.z_order),
    }
    return ET.Element("mask", attrs)


def shape_elements(task_shape: TaskShape, height: int, width: int, group_id: int) -> list[ET.Element]:
    """The XML elements of one annotation.

    Args:
        task_shape: The annotation.
        height, width: Image size (upright).
        group_id: Group written on the parts of a multi-part polygon (CVAT numbers groups per task).

    Returns:
        One element, or one ``<polygon>`` per part of a multi-part polygon.
    """
    shape, z_order = task_shape.shape, str(task_shape.z_order)
    if task_shape.encoding in ("rle", "rle_string"):
        return [_mask_element(task_shape, polygon_mask(shape.polygons, height, width))]
    if task_shape.encoding == "box":
        ys, xs = np.nonzero(polygon_mask(shape.polygons, height, width))
        corners = {"xtl": xs.min(), "ytl": ys.min(), "xbr": xs.max() + 1, "ybr": ys.max() + 1}
        attrs = {k: f"{float(v):.2f}" for k, v in corners.items()}
        return [ET.Element("box", {**_common(task_shape), **attrs, "z_order": z_order})]
    group = {"group_id": str(group_id)} if len(shape.polygons) > 1 else {}
    return [
        ET.Element("polygon", {**_common(task_shape), "points": _points(part), "z_order": z_order, **group})
        for part in shape.polygons
    ]


def _meta(task_name: str, category_names: Sequence[str], num_images: int) -> ET.Element:
    meta = ET.Element("meta")
    task = ET.SubElement(meta, "task")
    for tag, text in (("id", "1"), ("name", task_name), ("size", str(num_images)), ("mode", "annotation")):
        ET.SubElement(task, tag).text = text
    labels = ET.SubElement(task, "labels")
    for name in category_names:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = name
        ET.SubElement(label, "type").text = "any"
        ET.SubElement(label, "attributes")
    return meta


def cvat_xml_document(task_name: str, category_names: Sequence[str], images: Sequence[TaskImage]) -> str:
    """The ``annotations.xml`` text of a task.

    Args:
        task_name: Name written in ``<meta><task><name>``.
        category_names: Labels of the task, in creation order.
        images: The task's images (frame ids 0..n-1) and their annotations.
    """
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    root.append(_meta(task_name, category_names, len(images)))
    group_id = 0
    for frame, image in enumerate(images):
        attrs = {
            "id": str(frame),
            "name": image.file_name,
            "width": str(image.width),
            "height": str(image.height),
        }
        element = ET.SubElement(root, "image", attrs)
        for task_shape in image.shapes:
            if task_shape.encoding == "polygon" and len(task_shape.shape.polygons) > 1:
                group_id += 1
            element.extend(shape_elements(task_shape, image.height, image.width, group_id))
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
