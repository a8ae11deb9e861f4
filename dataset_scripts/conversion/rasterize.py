"""Turn one image's CVAT shapes (and an optional model stuff map) into a panoptic id map.

This is the pure per-image step of the converter: no file I/O, so it runs in worker processes
and is tested on hand-made shapes.

Painting order (later paints over earlier):

1. stuff predicted by a model (``stuff_map``), the bottom layer;
2. CVAT stuff regions; all regions of one stuff class form one segment;
3. CVAT things, each its own segment.

Inside layers 2 and 3 the higher CVAT ``z_order`` wins; when z-orders are equal (or lost, as in
COCO exports) ``overlap="area"`` lets the smaller region win (it is painted last) and
``overlap="order"`` the later annotation. A segment left without a visible pixel is dropped and
reported. Areas and boxes are computed from the final id map, never taken from the export.

Masks are rasterised into a patch around each shape (pycocotools for polygons and COCO RLE,
numpy for CVAT's RLE and for ellipses), so that large photos with many small shapes stay fast. The work and memory
per shape are bounded by the image size, never by the coordinates: polygons are clipped to the
image (plus a margin) before pycocotools sees them, CVAT masks are decoded only inside the image,
ellipses are evaluated only on the image pixels of their bounding box.

Pixel convention: pixel ``(col, row)`` is the unit square ``[col, col + 1) x [row, row + 1)``, with
its centre at ``(col + 0.5, row + 0.5)``. pycocotools fills a polygon's pixel when the centre is
inside (an axis-aligned edge at ``x = 2.5`` starts the fill at column 2, at ``x = 2.6`` at column 3),
and an ellipse's pixel is filled when its centre satisfies the ellipse inequality (boundary
included), so a polygon and an ellipse drawn over the same region agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

from dataset_scripts.conversion.polygon_clip import clip_polygon, outline_length
from dataset_scripts.conversion.report import (
    BOX_ONLY,
    DEGENERATE,
    EMPTY,
    INVISIBLE,
    OUT_OF_BOUNDS,
    TAG,
    UNSUPPORTED,
    ReportWarning,
)
from dataset_scripts.cvat.coco import decode_rle_string
from dataset_scripts.cvat.records import MASK_KINDS, ConversionError, Shape
from dataset_scripts.cvat.xml import decode_cvat_rle
from dataset_scripts.panoptic_format import segment_stats

# Polygons are clipped to the image expanded by this many image sizes on every side: parts inside
# are rasterised exactly as given; farther vertices (absurd coordinates) are moved onto the border.
CLIP_MARGIN = 1
# pycocotools walks a polygon's outline in 1/5 pixels with ~16 bytes per step: 10M pixels ~ 0.8 GB.
MAX_OUTLINE = 10_000_000


@dataclass(frozen=True)
class CategoryRef:
    """Output category of a label: its id and whether it is a thing."""

    id: int
    isthing: bool


@dataclass
class MaskPatch:
    """A shape's pixels: ``mask`` ``(h, w)`` bool placed at (``top``, ``left``) in the image."""

    top: int
    left: int
    mask: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class RasterResult:
    """Output of `rasterize_image`.

    Attributes:
        ids: ``(H, W)`` uint32 segment ids, 0 = void, segments numbered 1..n.
        segments_info: COCO-panoptic ``segments_info`` (id, category_id, iscrowd, bbox, area).
        warnings: What was skipped or repaired.
    """

    ids: np.ndarray
    segments_info: list[dict]
    warnings: list[ReportWarning] = field(default_factory=list)


def _warn(shape: Shape, image: str, code: str, message: str) -> ReportWarning:
    return ReportWarning(code, shape.source, image, shape.annotation_id, message)


def _polygon_parts(shape: Shape, height: int, width: int, image: str, warnings: list) -> list[np.ndarray]:
    """The shape's valid parts as ``(n, 2)`` arrays, clipped to the image plus `CLIP_MARGIN`."""
    margin = CLIP_MARGIN * max(height, width)
    parts = []
    for index, part in enumerate(shape.polygons):
        if len(part) < 6 or len(part) % 2:
            warnings.append(
                _warn(
                    shape,
                    image,
                    DEGENERATE,
                    f"polygon part {index} has {len(part) // 2} points (< 3): skipped",
                )
            )
            continue
        points = np.asarray(part, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(points).all():
            raise ConversionError(
                f"{shape.source}: image {image}, annotation {shape.annotation_id}: polygon has a non-finite coordinate"
            )
        clipped = clip_polygon(points, -margin, -margin, width + margin, height + margin)
        if len(clipped) >= 3:
            parts.append(clipped)
    if sum(outline_length(p) for p in parts) > MAX_OUTLINE:
        raise ConversionError(
            f"{shape.source}: image {image}, annotation {shape.annotation_id}: polygon outline longer than "
            f"{MAX_OUTLINE:,} pixels inside the image: refused"
        )
    return parts


def _polygon_patch(shape: Shape, height: int, width: int, image: str, warnings: list) -> MaskPatch | None:
    valid = [p for p in shape.polygons if len(p) >= 6 and len(p) % 2 == 0]
    parts = _polygon_parts(shape, height, width, image, warnings)
    if not valid:
        return None
    raw = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in valid])
    low, high = raw.min(axis=0), raw.max(axis=0)
    if low.min() < 0 or high[0] > width or high[1] > height:
        warnings.append(
            _warn(
                shape,
                image,
                OUT_OF_BOUNDS,
                f"polygon reaches ({low[0]:.1f}, {low[1]:.1f})-({high[0]:.1f}, {high[1]:.1f}) "
                f"outside the {width}x{height} image: clipped",
            )
        )
    if not parts:
        warnings.append(_warn(shape, image, EMPTY, "polygon lies entirely outside the image: skipped"))
        return None
    points = np.concatenate(parts)
    # Rasterise in a patch around the polygon: pycocotools' scan conversion is invariant to an
    # integer shift, so this equals rasterising in the full image, at a fraction of the cost.
    left = max(0, math.floor(points[:, 0].min()))
    top = max(0, math.floor(points[:, 1].min()))
    right = min(width, math.ceil(points[:, 0].max()) + 1)
    bottom = min(height, math.ceil(points[:, 1].max()) + 1)
    if right <= left or bottom <= top:
        warnings.append(_warn(shape, image, EMPTY, "polygon lies entirely outside the image: skipped"))
        return None
    shifted = [(part - (left, top)).ravel().tolist() for part in parts]
    rles = mask_utils.frPyObjects(shifted, bottom - top, right - left)
    areas = mask_utils.area(rles)
    kept = []
    for index, (rle, area) in enumerate(zip(rles, areas, strict=True)):
        if area == 0:
            warnings.append(_warn(shape, image, DEGENERATE, f"polygon part {index} has zero area: skipped"))
        else:
            kept.append(rle)
    if not kept:
        return None
    merged = mask_utils.merge(kept) if len(kept) > 1 else kept[0]
    return MaskPatch(top, left, mask_utils.decode(merged).astype(bool))


def _rle_patch(shape: Shape, height: int, width: int, image: str) -> MaskPatch:
    rle = dict(shape.rle or {})
    where = f"{shape.source}: image {image}, annotation {shape.annotation_id}"
    counts = rle.get("counts")
    if isinstance(counts, str):
        counts = rle["counts"] = decode_rle_string(counts, where)
    if rle.get("size") != [height, width] or not isinstance(counts, list) or sum(counts) != height * width:
        # The COCO reader checks this; shapes built by other code get the same one-line error.
        raise ConversionError(
            f"{shape.source}: image {image}, annotation {shape.annotation_id}: RLE does not cover the "
            f"{height}x{width} image exactly"
        )
    rle = mask_utils.frPyObjects(rle, height, width)
    x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
    full = mask_utils.decode(rle)
    return MaskPatch(y, x, full[y : y + h, x : x + w].astype(bool))


def _cvat_mask_patch(shape: Shape, height: int, width: int, image: str, warnings: list) -> MaskPatch | None:
    if shape.mask_box is None:
        raise ConversionError(
            f"{shape.source}: image {image}, annotation {shape.annotation_id}: mask without a box"
        )
    left, top, box_w, box_h = shape.mask_box
    if left < 0 or top < 0 or left + box_w > width or top + box_h > height:
        warnings.append(
            _warn(
                shape,
                image,
                OUT_OF_BOUNDS,
                f"mask box ({left}, {top}, {box_w}x{box_h}) exceeds the {width}x{height} image: clipped",
            )
        )
    # Decode only the part of the box inside the image: the work is bounded by the image size.
    x0, y0 = max(0, -left), max(0, -top)
    x1, y1 = min(box_w, width - left), min(box_h, height - top)
    if x1 <= x0 or y1 <= y0:
        return None
    try:
        mask = decode_cvat_rle(shape.mask_counts, box_w, box_h, (x0, y0, x1, y1))
    except ValueError as err:
        raise ConversionError(
            f"{shape.source}: image {image}, annotation {shape.annotation_id}: {err}"
        ) from None
    return MaskPatch(top + y0, left + x0, mask)


def _ellipse_patch(shape: Shape, height: int, width: int, image: str, warnings: list) -> MaskPatch | None:
    """The pixels whose centre lies in the (rotated) ellipse.

    CVAT's rotation is in degrees, clockwise on screen; with y pointing down, a point of the image
    is mapped into the ellipse's own axes by rotating it back by that angle about the centre.
    """
    if shape.ellipse is None:
        raise ConversionError(
            f"{shape.source}: image {image}, annotation {shape.annotation_id}: ellipse without its geometry"
        )
    cx, cy, rx, ry, rotation = shape.ellipse
    theta = math.radians(rotation)
    cos, sin = math.cos(theta), math.sin(theta)
    # Half extents of the rotated ellipse's bounding box.
    half_w = math.hypot(rx * cos, ry * sin)
    half_h = math.hypot(rx * sin, ry * cos)
    if cx - half_w < 0 or cy - half_h < 0 or cx + half_w > width or cy + half_h > height:
        warnings.append(
            _warn(
                shape,
                image,
                OUT_OF_BOUNDS,
                f"ellipse reaches ({cx - half_w:.1f}, {cy - half_h:.1f})-({cx + half_w:.1f}, {cy + half_h:.1f}) "
                f"outside the {width}x{height} image: clipped",
            )
        )
    if rx <= 0 or ry <= 0:
        return None
    # Columns whose centre col + 0.5 can lie within [cx - half_w, cx + half_w] (one spare each side).
    left = max(0, math.floor(cx - half_w - 0.5))
    right = min(width, math.ceil(cx + half_w - 0.5) + 1)
    top = max(0, math.floor(cy - half_h - 0.5))
    bottom = min(height, math.ceil(cy + half_h - 0.5) + 1)
    if right <= left or bottom <= top:
        warnings.append(_warn(shape, image, EMPTY, "ellipse lies entirely outside the image: skipped"))
        return None
    dx = np.arange(left, right, dtype=np.float64)[None, :] + 0.5 - cx
    dy = np.arange(top, bottom, dtype=np.float64)[:, None] + 0.5 - cy
    u = dx * cos + dy * sin
    v = -dx * sin + dy * cos
    return MaskPatch(top, left, (u / rx) ** 2 + (v / ry) ** 2 <= 1.0)


def shape_patch(shape: Shape, height: int, width: int, image: str = "") -> tuple[MaskPatch | None, list]:
    """Rasterise one mask-carrying shape.

    Args:
        shape: A ``polygon``, ``rle``, ``mask`` or ``ellipse`` shape.
        height: Image height.
        width: Image width.
        image: Image name for warnings.

    Returns:
        The patch (``None`` when nothing is left) and the warnings (degenerate parts,
        out-of-bounds coordinates, empty masks).
    """
    warnings: list[ReportWarning] = []
    if shape.kind == "polygon":
        patch = _polygon_patch(shape, height, width, image, warnings)
    elif shape.kind == "rle":
        patch = _rle_patch(shape, height, width, image)
    elif shape.kind == "mask":
        patch = _cvat_mask_patch(shape, height, width, image, warnings)
    elif shape.kind == "ellipse":
        patch = _ellipse_patch(shape, height, width, image, warnings)
    else:
        raise ValueError(f"not a mask shape: {shape.kind}")
    if patch is not None and patch.area == 0:
        patch = None
    if patch is None and not any(w.code in (EMPTY, DEGENERATE) for w in warnings):
        warnings.append(_warn(shape, image, EMPTY, "mask has no pixels: skipped"))
    return patch, warnings


def _skip_warning(shape: Shape, image: str) -> ReportWarning:
    if shape.kind == "box":
        return _warn(shape, image, BOX_ONLY, f"box-only annotation of '{shape.label}' has no mask: skipped")
    if shape.kind == "tag":
        return _warn(shape, image, TAG, f"image-level tag '{shape.label}' has no mask: skipped")
    return _warn(shape, image, UNSUPPORTED, f"<{shape.detail}> of '{shape.label}' is not supported: skipped")


@dataclass
class _Segments:
    """Provisional segments 1..n of one image: one per stuff category, one per thing shape."""

    category: list[int] = field(default_factory=lambda: [0])
    crowd: list[bool] = field(default_factory=lambda: [False])
    shapes: list[list[Shape]] = field(default_factory=lambda: [[]])
    stuff_index: dict[int, int] = field(default_factory=dict)

    def thing(self, category_id: int, crowd: bool, shape: Shape) -> int:
        self.category.append(category_id)
        self.crowd.append(crowd)
        self.shapes.append([shape])
        return len(self.category) - 1

    def stuff(self, category_id: int, shape: Shape | None = None) -> int:
        if category_id not in self.stuff_index:  # all regions of a stuff class form one segment
            self.stuff_index[category_id] = len(self.category)
            self.category.append(category_id)
            self.crowd.append(False)
            self.shapes.append([])
        index = self.stuff_index[category_id]
        if shape is not None:
            self.shapes[index].append(shape)
        return index

    def number(self, canvas: np.ndarray, image: str, warnings: list) -> tuple[np.ndarray, list[dict]]:
        """Final ids 1..m for the visible segments, their ``segments_info``; invisible ones reported."""
        visible = np.bincount(canvas.ravel(), minlength=len(self.category))
        final = np.zeros(len(self.category), dtype=np.uint32)
        next_id = 1
        for index in range(1, len(self.category)):
            if visible[index] > 0:
                final[index] = next_id
                next_id += 1
            elif self.shapes[index]:
                first = self.shapes[index][0]
                ann_ids = ",".join(s.annotation_id for s in self.shapes[index])
                message = f"'{first.label}' has no visible pixel left (covered by other segments): dropped"
                warnings.append(ReportWarning(INVISIBLE, first.source, image, ann_ids, message))
        ids = final[canvas]
        stats = segment_stats(ids)
        segments_info = [
            {
                "id": int(final[index]),
                "category_id": self.category[index],
                "iscrowd": int(self.crowd[index]),
                "bbox": stats[int(final[index])].bbox,
                "area": stats[int(final[index])].area,
            }
            for index in range(1, len(self.category))
            if final[index]
        ]
        return ids, segments_info


def rasterize_image(
    height: int,
    width: int,
    shapes: Sequence[Shape],
    categories: Mapping[str, CategoryRef],
    *,
    overlap: str = "area",
    keep_crowd: bool = False,
    stuff_map: np.ndarray | None = None,
    stuff_map_categories: Sequence[int] = (),
    image: str = "",
) -> RasterResult:
    """Paint an image's shapes into a panoptic id map.

    Args:
        height: Image height H.
        width: Image width W.
        shapes: The image's shapes (boxes, tags and unsupported shapes are reported and skipped).
        categories: Output category of every label that carries masks.
        overlap: ``"area"`` (smaller region wins on equal z_order) or ``"order"`` (later wins).
        keep_crowd: Keep the export's crowd flag on things (else every segment is iscrowd 0).
        stuff_map: Optional ``(H, W)`` int index into ``stuff_map_categories`` (-1 = void),
            painted below every CVAT shape.
        stuff_map_categories: Output category id (a stuff category) per stuff-map index.
        image: Image name for warnings.

    Returns:
        The id map, its ``segments_info`` (exact areas and boxes) and the warnings.
    """
    if overlap not in ("area", "order"):
        raise ValueError(f"overlap must be 'area' or 'order', got {overlap!r}")
    warnings: list[ReportWarning] = []
    segments = _Segments()
    lut_model = np.zeros(len(stuff_map_categories) + 1, dtype=np.int64)
    if stuff_map is not None:
        if stuff_map.shape != (height, width):
            raise ValueError(f"stuff map of shape {stuff_map.shape} for a {height}x{width} image")
        present = np.unique(stuff_map)
        for value in present[present >= 0].tolist():
            lut_model[value + 1] = segments.stuff(stuff_map_categories[value])

    layers = []  # (sort key, provisional index, patch)
    for shape in shapes:
        if shape.kind not in MASK_KINDS:
            warnings.append(_skip_warning(shape, image))
            continue
        patch, shape_warnings = shape_patch(shape, height, width, image)
        warnings.extend(shape_warnings)
        if patch is None:
            continue
        category = categories[shape.label]
        if category.isthing:
            index = segments.thing(category.id, keep_crowd and shape.iscrowd, shape)
        else:
            index = segments.stuff(category.id, shape)
        tie = -patch.area if overlap == "area" else 0
        key = (int(category.isthing), shape.z_order or 0, tie, shape.order)
        layers.append((key, index, patch))
    layers.sort(key=lambda item: item[0])

    dtype = np.uint16 if len(segments.category) < 2**16 else np.uint32
    if stuff_map is not None:
        canvas = lut_model.astype(dtype)[stuff_map.astype(np.int64) + 1]
    else:
        canvas = np.zeros((height, width), dtype=dtype)
    for _, index, patch in layers:
        h, w = patch.mask.shape
        canvas[patch.top : patch.top + h, patch.left : patch.left + w][patch.mask] = index
    ids, segments_info = segments.number(canvas, image, warnings)
    return RasterResult(ids=ids, segments_info=segments_info, warnings=warnings)
