"""One CVAT annotation task in memory, independent of the export format.

The writers (`coco_writer`, `xml_writer`) turn the same `TaskImage` list into CVAT COCO 1.0 JSON
and "CVAT for images 1.1" XML, so that both exports of a task describe the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dataset_scripts.sample.scene import Shape

# How a shape is annotated in CVAT: a polygon (multi-part: grouped polygons), a brush mask
# (COCO: uncompressed RLE or compressed-string RLE, both iscrowd=1; XML: <mask>) or a box.
ENCODINGS = ("polygon", "rle", "rle_string", "box")


@dataclass(frozen=True)
class TaskShape:
    """One annotation of a task.

    Attributes:
        shape: The region (label + polygons).
        encoding: One of `ENCODINGS`.
        z_order: CVAT's z-order (higher is in front); only the XML export keeps it.
    """

    shape: Shape
    encoding: str = "polygon"
    z_order: int = 0

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {self.encoding!r} (expected one of {', '.join(ENCODINGS)})")


@dataclass
class TaskImage:
    """One image of a task: its file name, upright size and annotations in creation order."""

    file_name: str
    width: int
    height: int
    shapes: list[TaskShape] = field(default_factory=list)
