"""The in-memory model of a CVAT export, shared by every reader and by the rasteriser.

CVAT writes the same annotations in several formats (COCO 1.0 JSON, "CVAT for images 1.1" XML,
one COCO file per class). Each reader turns its format into these records so that everything
after reading (merging exports, rasterising, splitting, reporting) sees one model:

* an `Export` is one annotation file with its label names and images;
* an `ImageRecord` is one image as the export describes it (file name, upright size) plus the
  folders where its file may be found;
* a `Shape` is one annotation: its label, its geometry (polygon parts, a full-image COCO RLE,
  a CVAT mask in a box, an ellipse, a box, or an image-level tag), its CVAT ``z_order`` (``None``
  when the format lost it) and where it came from (file + annotation id, for error messages).

Project exports and video tasks add to an image where it belongs: its CVAT ``subset`` (part of
its identity, because every task of a project may have an ``a.png``) and, for a video frame, the
video it comes from (``sequence``) and its position in it (``frame_index``).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ShapeKind = Literal["polygon", "rle", "mask", "ellipse", "box", "tag", "unsupported"]
# Kinds that carry pixels; the others are reported and skipped.
MASK_KINDS: frozenset[str] = frozenset({"polygon", "rle", "mask", "ellipse"})
# The subset of a plain task export: its images keep their bare path as identity, so that a COCO
# export (``instances_default.json``) and an XML export of one task still merge.
DEFAULT_SUBSET = "default"


class ConversionError(ValueError):
    """A user error in the input (the message names the file and the image/annotation id)."""


@dataclass(frozen=True)
class Shape:
    """One CVAT annotation.

    Attributes:
        label: CVAT label name (categories are merged across exports by this name).
        kind: ``polygon`` (``polygons``), ``rle`` (``rle``: a COCO RLE of the whole image, as
            ``{"size": [h, w], "counts": list[int] | str}``), ``mask`` (a CVAT brush mask:
            ``mask_counts`` alternating 0/1 run lengths starting with 0, row-major inside
            ``mask_box``), ``ellipse`` (``ellipse``), ``box``, ``tag`` or ``unsupported``
            (``detail`` says which element).
        source: File the annotation was read from.
        annotation_id: Id naming the annotation in that file (COCO ``id``; for XML
            ``"<frame id>/<element>#<index>"``).
        order: Position of the annotation in its file (for ``--overlap order``).
        z_order: CVAT ``z_order`` (higher is painted on top) or ``None`` when unknown (COCO).
        iscrowd: The export's crowd flag (CVAT sets it on every brush mask).
        occluded: CVAT ``occluded`` flag (kept for reporting only).
        polygons: Polygon parts as flat ``[x0, y0, x1, y1, ...]`` lists, in pixels.
        rle: COCO RLE dict of the whole image.
        mask_box: ``(left, top, width, height)`` of a CVAT mask.
        mask_counts: Run lengths of a CVAT mask.
        ellipse: ``(cx, cy, rx, ry, rotation)`` of a CVAT ellipse, in pixels; ``rotation`` in
            degrees, clockwise on screen (CVAT's convention, y pointing down).
        detail: Free text for ``unsupported`` shapes (the XML element name).
    """

    label: str
    kind: ShapeKind
    source: str
    annotation_id: str
    order: int = 0
    z_order: int | None = None
    iscrowd: bool = False
    occluded: bool = False
    polygons: tuple[tuple[float, ...], ...] = ()
    rle: dict | None = None
    mask_box: tuple[int, int, int, int] | None = None
    mask_counts: tuple[int, ...] = ()
    ellipse: tuple[float, float, float, float, float] | None = None
    detail: str = ""


@dataclass
class ImageRecord:
    """One image of an export.

    Attributes:
        file_name: The name as written in the export (may contain folders).
        width: Upright width in pixels, as CVAT recorded it.
        height: Upright height in pixels.
        image_id: Id of the image in the export (COCO ``id``, XML frame ``id``).
        source: The annotation file that lists the image.
        search_dirs: Folders to look for ``file_name`` in (first hit wins).
        shapes: The image's annotations, in file order.
        subset: The CVAT subset of a project export (``Train``, ``Test``...; ``""`` for a task).
        alternates: Other file names to try when ``file_name`` is not found (a video frame's
            picture is ``frame_000012.PNG`` in current CVAT, ``.jpg`` in some older versions).
        sequence: The video a frame belongs to (``""`` for a picture).
        frame_index: The frame's position in its video, in the task's frame steps.
    """

    file_name: str
    width: int
    height: int
    image_id: str
    source: str
    search_dirs: tuple[Path, ...] = ()
    shapes: list[Shape] = field(default_factory=list)
    subset: str = ""
    alternates: tuple[str, ...] = ()
    sequence: str = ""
    frame_index: int | None = None

    @property
    def key(self) -> str:
        """The image's identity: its subset and its relative path inside the export, normalised.

        Two pictures of one export with the same base name in different folders
        (``cam1/0001.jpg``, ``cam2/0001.jpg``) or in two subsets of a project (``Train/a.png``,
        ``Test/a.png``) are different images; images of several exports are merged when their
        keys are equal. A task's images (no subset, or CVAT's ``default``) are keyed by path alone.
        """
        name = normalise_file_name(self.file_name)
        if self.subset and self.subset != DEFAULT_SUBSET:
            return f"{self.subset}/{name}"
        return name

    def resolve(self) -> Path | None:
        """The image file on disk, or ``None`` when no search folder holds it.

        Tries ``dir/file_name`` (nested paths as written) and then ``dir/<base name>`` in
        every search folder, then the same for every alternate name. A candidate that leaves its search folder (``../x.jpg``, an
        absolute name) is only accepted when it lies inside another search folder (e.g. one
        named by ``--images``).

        Raises:
            ConversionError: the file exists only outside every search folder.
        """
        names = [Path(name) for name in (self.file_name, *self.alternates)]
        roots = [Path(os.path.abspath(folder)) for folder in self.search_dirs]
        outside = None
        for folder in self.search_dirs:
            for candidate in (path for rel in names for path in (folder / rel, folder / rel.name)):
                if not candidate.is_file():
                    continue
                if any(_is_within(candidate, root) for root in roots):
                    return candidate
                outside = outside or candidate
        if outside is not None:
            raise ConversionError(
                f"{self.source}: image {self.image_id} ({self.file_name}): the picture {outside} is outside "
                "the export folder: refused (pass --images with its folder to allow it)"
            )
        return None


def normalise_file_name(file_name: str) -> str:
    """A picture name as a normalised POSIX relative path (``./a\\b.jpg`` -> ``a/b.jpg``)."""
    return posixpath.normpath(file_name.replace("\\", "/"))


def _is_within(path: Path, root: Path) -> bool:
    """Whether ``path`` (made absolute, ``..`` removed lexically) lies inside ``root``."""
    return Path(os.path.abspath(path)).is_relative_to(root)


@dataclass
class Export:
    """One annotation file read into records.

    Attributes:
        source: The annotation file.
        labels: Every label name the file declares, in its order (also unused ones).
        images: The images, in file order.
        label_supercategories: Supercategory per label where the export gives a non-empty one.
    """

    source: str
    labels: list[str]
    images: list[ImageRecord]
    label_supercategories: dict[str, str] = field(default_factory=dict)
