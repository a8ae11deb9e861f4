"""Generate procedural "construction scene" photos with CVAT COCO 1.0 annotations.

Two uses:

* ``python dataset_scripts/make_sample.py --out sample_data`` writes the small bundled sample: two
  CVAT COCO 1.0 exports (``cvat_task_materials/`` and ``cvat_task_machines/``) holding every quirk
  real CVAT exports have (see `SAMPLE_QUIRKS`), plus a ``README.md`` listing them.
* ``python dataset_scripts/make_sample.py --out DIR --num-images N [--seed S] [--size WxH]
  [--exports K] [--min-things A --max-things B]`` writes larger, clean sets (K exports with
  different category ids, no other quirk) for training benchmarks: few, large things of distinct
  colour and texture, so a tiny DETR trained from scratch can learn them.

A scene is two textured "stuff" bands (``sky`` or ``wall`` above, ``floor`` or ``ground`` below)
with "things" in front: ``brick`` stacks (red, mortar lines), ``pipe`` (orange shaded cylinders),
``tile`` patches (teal squares with white grout) and ``excavator`` (yellow body, black tracks and a
two-part arm: a multi-part polygon). Every shape is a COCO polygon first; its pixels are the
pycocotools rasterisation of that polygon, so image and annotation agree exactly.

Layout: `render_scene` (pure: seed -> image + shapes) and `shape_annotation` (one shape -> one
CVAT annotation dict); `bundled_sample_plans` / `synthetic_plans` say which scenes go to which
export; `write_export` and `write_dataset` (atomic) write them; a thin `main`.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from dataset_scripts.atomic_io import atomic_directory

logger = logging.getLogger(__name__)

STUFF_LABELS = ("floor", "wall", "sky", "ground")
MATERIAL_LABELS = ("brick", "pipe", "tile")
THING_LABELS = (*MATERIAL_LABELS, "excavator")
TOP_STUFF = ("sky", "wall")
BOTTOM_STUFF = ("floor", "ground")

# Category order of each bundled export: the same names get different ids (CVAT numbers the
# labels of each task from 1 in the order they were created).
MATERIALS_CATEGORIES = ("floor", "wall", "sky", "ground", "brick", "pipe", "tile")
MACHINES_CATEGORIES = ("excavator", "ground", "sky", "wall", "floor")

EXIF_ORIENTATION_TAG = 0x0112
SHARED_FILE_NAME = "site_shared_000.jpg"

SAMPLE_QUIRKS = (
    "The two exports number the same labels differently: `cvat_task_materials` has "
    + ", ".join(f"{name}={i}" for i, name in enumerate(MATERIALS_CATEGORIES, 1))
    + "; `cvat_task_machines` has "
    + ", ".join(f"{name}={i}" for i, name in enumerate(MACHINES_CATEGORIES, 1))
    + ".",
    f"`{SHARED_FILE_NAME}` (same name and size) is in both exports: the stuff, brick, pipe and tile "
    "polygons are in `cvat_task_materials`, the excavator in `cvat_task_machines`.",
    "Brush masks: `materials_002.jpg` (brick) and `machines_001.jpg` (excavator) hold uncompressed RLE "
    '`{"size": [h, w], "counts": [ints]}` with `iscrowd: 1`, as CVAT writes brush masks; '
    "`materials_003.jpg` (tile) holds a compressed-string RLE.",
    "`materials_001.jpg`: a small pipe in front of a large tile patch; both polygons are complete "
    "(the tile polygon covers the pipe) and the pipe is listed first: the z-order is lost, as in every "
    "COCO export, and the smaller segment is the one in front.",
    "`materials_004.jpg`: an unannotated region (a purple tarp on the floor, outside every polygon): void.",
    "`materials_005.jpg`: pixels stored rotated by 90 degrees with EXIF Orientation = 6; the upright "
    "image matches the JSON width/height (CVAT shows it upright).",
    "`materials_006.jpg`: a grayscale (mode L) JPEG.",
    "`materials_007.jpg`: listed in `images` with no annotation at all.",
    "Every third annotation has a wrong `bbox` and `area` (shifted box, area of the box), as CVAT "
    "sometimes writes them (cvat-ai/cvat#8307): a converter must recompute both.",
    "Every excavator is a multi-part polygon: body with tracks, boom and stick are separate parts.",
    "Image sizes vary: most are 320x240, every fourth image of each export is 256x192.",
)


# --------------------------------------------------------------------------------------------------
# Scene rendering (pure)
# --------------------------------------------------------------------------------------------------


@dataclass
class Shape:
    """One annotated region of a scene.

    Attributes:
        label: Category name.
        polygons: COCO polygons (one flat ``[x0, y0, x1, y1, ...]`` list per part), pixel-edge
            coordinates in ``[0, W] x [0, H]``. The region is their pycocotools rasterisation,
            complete even where a later shape is painted over it.
    """

    label: str
    polygons: list[list[float]]


@dataclass
class Scene:
    """A rendered scene.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB pixels.
        shapes: Annotated regions in paint order (stuff first, then things back to front).
    """

    image: np.ndarray = field(repr=False)
    shapes: list[Shape]


@dataclass(frozen=True)
class SceneOptions:
    """Knobs of `render_scene`.

    Attributes:
        width, height: Image size in pixels.
        thing_labels: Labels things are drawn from.
        min_things, max_things: Number of things per scene (inclusive range).
        required: Labels that must appear (they count towards the number of things).
        top, bottom: Force the stuff of the upper / lower band (None: random).
        overlap_pair: Draw a small pipe in front of a large tile patch (both annotated complete).
        void_patch: Paint an unannotated object (a purple tarp) on the lower band.
    """

    width: int = 320
    height: int = 240
    thing_labels: tuple[str, ...] = MATERIAL_LABELS
    min_things: int = 1
    max_things: int = 3
    required: tuple[str, ...] = ()
    top: str | None = None
    bottom: str | None = None
    overlap_pair: bool = False
    void_patch: bool = False


def polygon_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons with pycocotools (the rasteriser every COCO tool uses).

    Returns:
        ``(H, W)`` bool mask, the union of the parts.
    """
    rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _round_polygon(points: Sequence[float]) -> list[float]:
    return [round(float(v), 2) for v in points]


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    return rng.normal(0.0, sigma, size=(*shape, 1))


def _stuff_texture(label: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A full-frame ``(H, W, 3)`` float texture of one stuff class."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    if label == "sky":
        top, bottom = np.array([90.0, 150.0, 230.0]), np.array([185.0, 215.0, 245.0])
        t = (yy / max(height - 1, 1))[..., None]
        tex = top * (1 - t) + bottom * t + _noise(rng, (height, width), 2.0)
    elif label == "wall":
        base = np.array([205.0, 195.0, 170.0]) + rng.uniform(-10, 10, 3)
        blotches = np.sin(xx / 9.0 + rng.uniform(0, 6)) * np.cos(yy / 7.0) * 6.0
        tex = base + blotches[..., None] + _noise(rng, (height, width), 5.0)
    elif label == "floor":
        base = np.array([125.0, 125.0, 128.0]) + rng.uniform(-8, 8, 3)
        tex = base + _noise(rng, (height, width), 9.0)
        slab = max(width // 5, 8)  # concrete slab joints
        tex[(xx.astype(int) % slab) == 0] *= 0.6
    elif label == "ground":
        base = np.array([135.0, 98.0, 62.0]) + rng.uniform(-8, 8, 3)
        pebbles = (rng.random((height, width)) < 0.03)[..., None] * 40.0
        tex = base + _noise(rng, (height, width), 12.0) - pebbles
    else:
        raise ValueError(f"unknown stuff label {label!r}")
    return tex


def _paint(canvas: np.ndarray, mask: np.ndarray, texture: np.ndarray) -> None:
    canvas[mask] = texture[mask] if texture.ndim == 3 else texture


def _brick_texture(rng: np.random.Generator, box: tuple[float, float, float, float], shape: tuple[int, int]):
    """Red bricks in running bond with light mortar lines, over the whole frame."""
    height, width = shape
    x0, y0, x1, y1 = box
    row_h = max((y1 - y0) / rng.integers(3, 6), 4.0)
    brick_w = row_h * 2.2
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    row = np.floor((yy - y0) / row_h)
    shifted = xx - x0 + (row % 2) * brick_w / 2
    col = np.floor(shifted / brick_w)
    shade = ((row * 7 + col * 13) % 5)[..., None] * 6.0
    tex = np.array([170.0, 62.0, 42.0]) + shade + _noise(rng, shape, 6.0)
    mortar = (((yy - y0) % row_h) < 1.2) | ((shifted % brick_w) < 1.2)
    tex[mortar] = np.array([215.0, 210.0, 200.0])
    return tex


def _tile_texture(rng: np.random.Generator, box: tuple[float, float, float, float], shape: tuple[int, int]):
    """Teal ceramic squares with white grout, over the whole frame."""
    x0, y0, x1, _ = box
    cell = max((x1 - x0) / rng.integers(3, 5), 5.0)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    tex = np.array([40.0, 150.0, 140.0]) + _noise(rng, shape, 5.0)
    grout = (((xx - x0) % cell) < 1.5) | (((yy - y0) % cell) < 1.5)
    tex[grout] = np.array([240.0, 240.0, 235.0])
    return tex


def _pipe_texture(axis_origin: np.ndarray, normal: np.ndarray, radius: float, shape: tuple[int, int]):
    """Orange cylinder shading: bright along the axis, dark at the rims."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    across = ((xx - axis_origin[0]) * normal[0] + (yy - axis_origin[1]) * normal[1]) / max(radius, 1.0)
    light = 0.45 + 0.55 * np.cos(np.clip(across, -1.0, 1.0) * math.pi / 2)
    return np.array([235.0, 125.0, 25.0]) * light[..., None] + 10.0


def _make_brick(rng, w, h, scale) -> tuple[list[list[float]], tuple]:
    bw, bh = rng.uniform(0.22, 0.36) * w * scale, rng.uniform(0.2, 0.34) * h * scale
    return [_rect(0, 0, bw, bh)], (bw, bh)


def _make_tile(rng, w, h, scale) -> tuple[list[list[float]], tuple]:
    side = rng.uniform(0.28, 0.42) * min(w, h) * scale
    return [_rect(0, 0, side, side)], (side, side)


def _make_pipe(rng, w, h, scale) -> tuple[list[list[float]], tuple]:
    length, thick = rng.uniform(0.35, 0.6) * w * scale, rng.uniform(0.07, 0.11) * h * scale
    angle = math.radians(rng.uniform(-20, 20))
    ux, uy = math.cos(angle), math.sin(angle)
    nx, ny = -uy, ux
    pts = [(0, 0), (length * ux, length * uy)]
    corners = [
        (pts[0][0] + nx * thick / 2, pts[0][1] + ny * thick / 2),
        (pts[1][0] + nx * thick / 2, pts[1][1] + ny * thick / 2),
        (pts[1][0] - nx * thick / 2, pts[1][1] - ny * thick / 2),
        (pts[0][0] - nx * thick / 2, pts[0][1] - ny * thick / 2),
    ]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    flat = [v for c in corners for v in (c[0] - min(xs), c[1] - min(ys))]
    return [flat], (max(xs) - min(xs), max(ys) - min(ys))


def _make_excavator(rng, w, h, scale) -> tuple[list[list[float]], tuple]:
    """Three parts: body (tracks + house + cab), boom, stick with bucket; facing right or left."""
    bw = rng.uniform(0.3, 0.42) * w * scale
    bh = bw * 0.55
    track_h, house_top, cab_top = bh, bh * 0.35, 0.0
    body = [0, house_top, bw * 0.55, house_top, bw * 0.55, cab_top, bw * 0.8, cab_top]
    body += [bw * 0.8, house_top, bw, house_top, bw, track_h, 0, track_h]
    pivot = (bw * 0.85, house_top + bh * 0.15)
    elbow = (bw * 1.35, -bh * 0.15)
    tip = (bw * 1.55, bh * 0.75)
    t = bh * 0.09

    def beam(a, b, half):
        dx, dy = b[0] - a[0], b[1] - a[1]
        n = math.hypot(dx, dy)
        nx, ny = -dy / n * half, dx / n * half
        return [a[0] + nx, a[1] + ny, b[0] + nx, b[1] + ny, b[0] - nx, b[1] - ny, a[0] - nx, a[1] - ny]

    parts = [body, beam(pivot, elbow, t), beam(elbow, tip, t * 0.8)]
    xs = [v for p in parts for v in p[0::2]]
    ys = [v for p in parts for v in p[1::2]]
    mirror = rng.random() < 0.5
    out = []
    for part in parts:
        moved = []
        for x, y in zip(part[0::2], part[1::2], strict=True):
            x = max(xs) - x if mirror else x - min(xs)
            moved += [x, y - min(ys)]
        out.append(moved)
    return out, (max(xs) - min(xs), max(ys) - min(ys))


_MAKERS = {"brick": _make_brick, "tile": _make_tile, "pipe": _make_pipe, "excavator": _make_excavator}


def _place(polygons: list[list[float]], dx: float, dy: float, width: int, height: int) -> list[list[float]]:
    placed = []
    for part in polygons:
        xs = [min(max(x + dx, 0.0), float(width)) for x in part[0::2]]
        ys = [min(max(y + dy, 0.0), float(height)) for y in part[1::2]]
        placed.append(_round_polygon([v for xy in zip(xs, ys, strict=True) for v in xy]))
    return placed


def _thing_texture(label, polygons, rng, shape, mask) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    if label == "brick":
        return _brick_texture(rng, box, shape)
    if label == "tile":
        return _tile_texture(rng, box, shape)
    if label == "pipe":
        p = np.array(polygons[0]).reshape(-1, 2)
        axis = (p[1] - p[0]) / max(np.linalg.norm(p[1] - p[0]), 1e-6)
        normal = np.array([-axis[1], axis[0]])
        radius = np.linalg.norm(p[3] - p[0]) / 2
        return _pipe_texture((p[0] + p[3]) / 2, normal, radius, shape)
    if label == "excavator":
        tex = np.array([240.0, 195.0, 30.0]) + _noise(rng, shape, 5.0)
        body = polygon_mask([polygons[0]], *shape)
        yb = np.nonzero(body)[0]
        tracks = body & (np.arange(shape[0])[:, None] >= yb.min() + 0.72 * (yb.max() - yb.min()))
        tex[tracks] = np.array([35.0, 35.0, 38.0])
        return tex
    raise ValueError(f"unknown thing label {label!r}")


def render_scene(seed: int, options: SceneOptions | None = None) -> Scene:
    """Render one scene: deterministic for a seed and options.

    Args:
        seed: Seed of the scene's random generator.
        options: Size, classes and quirks of the scene (default `SceneOptions()`).

    Returns:
        The ``(H, W, 3)`` uint8 image and its shapes in paint order.
    """
    options = options or SceneOptions()
    rng = np.random.default_rng(seed)
    w, h = options.width, options.height
    canvas = np.zeros((h, w, 3), dtype=np.float64)
    shapes: list[Shape] = []

    # Stuff: an upper and a lower band split by a slightly slanted horizon. The lower band is
    # painted over the whole frame first so that no seam pixel is left unpainted.
    top = options.top or str(rng.choice(TOP_STUFF))
    bottom = options.bottom or str(rng.choice(BOTTOM_STUFF))
    left_y, right_y = (float(rng.uniform(0.35, 0.55) * h) for _ in range(2))
    top_poly = _round_polygon([0, 0, w, 0, w, right_y, 0, left_y])
    bottom_poly = _round_polygon([0, left_y, w, right_y, w, h, 0, h])
    _paint(canvas, np.ones((h, w), dtype=bool), _stuff_texture(bottom, rng, h, w))
    _paint(canvas, polygon_mask([top_poly], h, w), _stuff_texture(top, rng, h, w))
    if options.void_patch:
        # A purple tarp in the lower-left corner, cut out of the lower band's polygon: void pixels.
        tx1, ty0 = round(w * 0.3, 2), round(h * 0.8, 2)
        bottom_poly = _round_polygon([0, left_y, w, right_y, w, h, tx1, h, tx1, ty0, 0, ty0])
        _paint(canvas, polygon_mask([_rect(0, ty0, tx1, h)], h, w), np.array([150.0, 40.0, 170.0]))
    shapes += [Shape(top, [top_poly]), Shape(bottom, [bottom_poly])]

    # Things: required labels first, then random ones; painted larger first so that smaller ones
    # are in front (the rule a converter applies when a COCO export has lost the z-order).
    count = int(rng.integers(options.min_things, options.max_things + 1))
    labels = list(options.required)
    while len(labels) < count:
        labels.append(str(rng.choice(options.thing_labels)))
    scale = 1.0 if len(labels) <= 2 else 0.8
    drafts = [(label, *_MAKERS[label](rng, w, h, scale)) for label in labels]
    drafts.sort(key=lambda d: -d[2][0] * d[2][1])
    boxes: list[tuple[float, float, float, float]] = []
    if options.overlap_pair:
        side = 0.45 * min(w, h)
        pair_box = (w - side - 4, h - side - 2, w - 4, h - 2)
        boxes.append(pair_box)
    if options.void_patch:
        boxes.append((0, h * 0.8, w * 0.3, h))
    for label, polygons, (bw, bh) in drafts:
        # Rejection sampling keeps things apart, so that every one stays visible.
        for _ in range(40):
            x = float(rng.uniform(0, max(w - bw, 1)))
            y = float(rng.uniform(min(left_y, right_y) - bh * 0.3, max(h - bh, 1)))
            box = (x, y, x + bw, y + bh)
            if all(box[2] <= b[0] or box[0] >= b[2] or box[3] <= b[1] or box[1] >= b[3] for b in boxes):
                break
        boxes.append(box)
        placed = _place(polygons, x, y, w, h)
        mask = polygon_mask(placed, h, w)
        if mask.any():
            _paint(canvas, mask, _thing_texture(label, placed, rng, (h, w), mask))
            shapes.append(Shape(label, placed))

    if options.overlap_pair:
        # A large tile patch with a small pipe in front; both polygons are complete (the tile's
        # covers the pipe), as a COCO export has them.
        tx0, ty0, tx1, ty1 = pair_box
        tile_poly = [_round_polygon(_rect(tx0, ty0, tx1, ty1))]
        tile_mask = polygon_mask(tile_poly, h, w)
        _paint(canvas, tile_mask, _tile_texture(rng, pair_box, (h, w)))
        pipe_rel, (pw, ph) = _make_pipe(rng, side * 1.3, side * 1.3, 1.0)
        pipe_poly = _place(pipe_rel, tx0 + (side - pw) / 2, ty0 + (side - ph) / 2, w, h)
        pipe_mask = polygon_mask(pipe_poly, h, w)
        _paint(canvas, pipe_mask, _thing_texture("pipe", pipe_poly, rng, (h, w), pipe_mask))
        shapes += [Shape("tile", tile_poly), Shape("pipe", pipe_poly)]

    image = np.clip(canvas + _noise(rng, (h, w), 3.0), 0, 255).astype(np.uint8)
    return Scene(image=image, shapes=shapes)


# --------------------------------------------------------------------------------------------------
# CVAT COCO 1.0 annotations
# --------------------------------------------------------------------------------------------------


def uncompressed_rle(mask: np.ndarray) -> dict:
    """CVAT's brush-mask RLE: ``{"size": [h, w], "counts": [ints]}``, column-major runs from a 0-run.

    Args:
        mask: ``(H, W)`` bool.
    """
    flat = np.asfortranarray(mask).ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


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
            uncompressed RLE, ``iscrowd: 1``) or ``"rle_string"`` (compressed-string RLE, crowd).
        corrupt_box: Write a shifted ``bbox`` and the box's area, as CVAT sometimes does.

    Returns:
        The annotation dict in CVAT's key order.
    """
    rle = mask_utils.merge(mask_utils.frPyObjects(shape.polygons, height, width))
    area = float(mask_utils.area(rle))
    bbox = [round(float(v), 2) for v in mask_utils.toBbox(rle)]
    if encoding == "polygon":
        segmentation: list | dict = shape.polygons
        iscrowd = 0
    elif encoding == "rle":
        segmentation = uncompressed_rle(mask_utils.decode(rle).astype(bool))
        iscrowd = 1
    elif encoding == "rle_string":
        encoded = mask_utils.encode(np.asfortranarray(mask_utils.decode(rle)))
        segmentation = {"size": [height, width], "counts": encoded["counts"].decode("ascii")}
        iscrowd = 1
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


def encode_image(image: np.ndarray, storage: str = "rgb", quality: int = 88) -> bytes:
    """JPEG bytes of an ``(H, W, 3)`` uint8 image.

    Args:
        storage: ``"rgb"``; ``"gray"`` (mode L); ``"exif_rotated"``: pixels stored rotated by 90
            degrees counter-clockwise with EXIF Orientation 6, so that a viewer applying the tag
            (as CVAT does) shows the original upright image.
    """
    pil = Image.fromarray(image, mode="RGB")
    exif = Image.Exif()
    if storage == "gray":
        pil = pil.convert("L")
    elif storage == "exif_rotated":
        pil = pil.transpose(Image.Transpose.ROTATE_90)
        exif[EXIF_ORIENTATION_TAG] = 6
    elif storage != "rgb":
        raise ValueError(f"unknown storage {storage!r}")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


@dataclass(frozen=True)
class ImagePlan:
    """One image of one export.

    Attributes:
        file_name: Name in ``images/``.
        seed: Scene seed.
        options: Scene options.
        labels: Labels annotated in this export (None: all); other shapes are left out.
        encodings: ``{label: encoding}`` for `shape_annotation` (default polygon).
        storage: See `encode_image`.
        annotated: False: the image is listed with no annotation.
    """

    file_name: str
    seed: int
    options: SceneOptions
    labels: tuple[str, ...] | None = None
    encodings: tuple[tuple[str, str], ...] = ()
    storage: str = "rgb"
    annotated: bool = True


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


def write_export(export_dir: Path, category_names: Sequence[str], plans: Sequence[ImagePlan]) -> dict:
    """Render the planned images and write one CVAT COCO 1.0 export.

    Args:
        export_dir: Output folder (``annotations/instances_default.json`` + ``images/``).
        category_names: Labels of the task, in id order.
        plans: The images.

    Returns:
        The written COCO document.
    """
    doc = cvat_coco_skeleton(category_names)
    cat_ids = {c["name"]: c["id"] for c in doc["categories"]}
    (export_dir / "images").mkdir(parents=True, exist_ok=True)
    for image_id, plan in enumerate(plans, 1):
        scene = render_scene(plan.seed, plan.options)
        height, width = scene.image.shape[:2]
        # Plain writes: `write_dataset` builds the whole folder in a temporary sibling.
        (export_dir / "images" / plan.file_name).write_bytes(encode_image(scene.image, plan.storage))
        doc["images"].append(
            {
                "id": image_id,
                "width": width,
                "height": height,
                "file_name": plan.file_name,
                "license": 0,
                "flickr_url": "",
                "coco_url": "",
                "date_captured": 0,
            }
        )
        if not plan.annotated:
            continue
        shapes = [s for s in scene.shapes if plan.labels is None or s.label in plan.labels]
        if plan.options.overlap_pair:
            shapes = shapes[:-2] + shapes[:-3:-1]  # the small front pipe listed before the tile
        encodings = dict(plan.encodings)
        for shape in shapes:
            ann_id = len(doc["annotations"]) + 1
            doc["annotations"].append(
                shape_annotation(
                    shape,
                    ann_id,
                    image_id,
                    cat_ids[shape.label],
                    height,
                    width,
                    encoding=encodings.get(shape.label, "polygon"),
                    corrupt_box=ann_id % 3 == 0,
                )
            )
    (export_dir / "annotations").mkdir(exist_ok=True)
    (export_dir / "annotations" / "instances_default.json").write_text(json.dumps(doc), encoding="utf-8")
    return doc


# --------------------------------------------------------------------------------------------------
# Orchestrators
# --------------------------------------------------------------------------------------------------


def _size_for(index: int) -> tuple[int, int]:
    return (256, 192) if index % 4 == 3 else (320, 240)


def bundled_sample_plans(seed: int = 0) -> dict[str, tuple[tuple[str, ...], list[ImagePlan]]]:
    """The plan of the bundled sample: ``{export name: (category names, image plans)}``."""
    stuff_and_materials = (*STUFF_LABELS, *MATERIAL_LABELS)
    shared = SceneOptions(
        thing_labels=MATERIAL_LABELS, min_things=3, max_things=3, required=("excavator", "brick"), top="sky"
    )
    shared_seed = seed * 1000 + 999
    materials = [ImagePlan(SHARED_FILE_NAME, shared_seed, shared, labels=stuff_and_materials)]
    special: dict[int, dict] = {
        1: {"options": {"overlap_pair": True, "min_things": 1, "max_things": 1, "required": ("brick",)}},
        2: {"encodings": (("brick", "rle"),), "options": {"required": ("brick",)}},
        3: {"encodings": (("tile", "rle_string"),), "options": {"required": ("tile",)}},
        4: {"options": {"void_patch": True, "bottom": "floor"}},
        5: {"storage": "exif_rotated"},
        6: {"storage": "gray"},
        7: {"annotated": False},
    }
    for i in range(18):
        extra = special.get(i, {})
        w, h = _size_for(i)
        opts = {"width": w, "height": h, "required": (MATERIAL_LABELS[i % 3],), **extra.get("options", {})}
        materials.append(
            ImagePlan(
                f"materials_{i:03d}.jpg",
                seed * 1000 + i,
                SceneOptions(**opts),
                encodings=extra.get("encodings", ()),
                storage=extra.get("storage", "rgb"),
                annotated=extra.get("annotated", True),
            )
        )
    machines = [ImagePlan(SHARED_FILE_NAME, shared_seed, shared, labels=("excavator",))]
    for i in range(10):
        w, h = _size_for(i)
        opts = SceneOptions(
            width=w, height=h, thing_labels=("excavator",), min_things=1, max_things=1, bottom="ground"
        )
        encodings = (("excavator", "rle"),) if i == 1 else ()
        machines.append(ImagePlan(f"machines_{i:03d}.jpg", seed * 1000 + 500 + i, opts, encodings=encodings))
    return {
        "cvat_task_materials": (MATERIALS_CATEGORIES, materials),
        "cvat_task_machines": (MACHINES_CATEGORIES, machines),
    }


def synthetic_plans(
    num_images: int,
    seed: int = 0,
    size: tuple[int, int] = (320, 240),
    exports: int = 2,
    min_things: int = 1,
    max_things: int = 3,
    thing_labels: Sequence[str] = THING_LABELS,
) -> dict[str, tuple[tuple[str, ...], list[ImagePlan]]]:
    """Plans of a clean synthetic set: images dealt round-robin to `exports` exports whose
    category ids differ (each export rotates the label list), every label in every scene allowed."""
    if num_images < 1 or exports < 1 or not 0 <= min_things <= max_things:
        raise ValueError("need --num-images >= 1, --exports >= 1 and 0 <= --min-things <= --max-things")
    unknown = sorted(set(thing_labels) - set(THING_LABELS))
    if unknown or not thing_labels:
        raise ValueError(
            f"--things must name some of {', '.join(THING_LABELS)}; got {', '.join(unknown) or 'none'}"
        )
    thing_labels = tuple(dict.fromkeys(thing_labels))
    labels = (*STUFF_LABELS, *thing_labels)
    out: dict[str, tuple[tuple[str, ...], list[ImagePlan]]] = {}
    for k in range(min(exports, num_images)):
        names = labels[k % len(labels) :] + labels[: k % len(labels)]
        out[f"cvat_task_{k:02d}"] = (names, [])
    names_of = list(out)
    options = SceneOptions(
        width=size[0], height=size[1], thing_labels=thing_labels, min_things=min_things, max_things=max_things
    )
    for i in range(num_images):
        plan = ImagePlan(f"synth_{seed:04d}_{i:06d}.jpg", seed * 1_000_003 + i, options)
        out[names_of[i % len(names_of)]][1].append(plan)
    return out


def _readme(out_dir: Path, command: str, docs: dict[str, dict]) -> str:
    lines = [
        "# Bundled CVAT sample (generated)",
        "",
        "Procedural construction-scene photos with CVAT COCO 1.0 annotations, made by",
        "`dataset_scripts/make_sample.py`. Regenerate it (byte-identical for the same seed) with:",
        "",
        "```bash",
        command,
        "```",
        "",
        "| export | images | annotations | categories (id=name) |",
        "|---|---|---|---|",
    ]
    for name, doc in docs.items():
        cats = ", ".join(f"{c['id']}={c['name']}" for c in doc["categories"])
        lines.append(f"| `{name}` | {len(doc['images'])} | {len(doc['annotations'])} | {cats} |")
    per_class: dict[str, set[str]] = {}
    for doc in docs.values():
        cat_names = {c["id"]: c["name"] for c in doc["categories"]}
        file_of = {im["id"]: im["file_name"] for im in doc["images"]}
        for ann in doc["annotations"]:
            per_class.setdefault(cat_names[ann["category_id"]], set()).add(file_of[ann["image_id"]])
    unique = {im["file_name"] for doc in docs.values() for im in doc["images"]}
    total = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    lines += [
        "",
        f"{len(unique)} distinct images, {total / 1e6:.2f} MB in all. Images per class: "
        + ", ".join(f"{k} {len(v)}" for k, v in sorted(per_class.items()))
        + ".",
        "",
        "## Quirks (on purpose: real CVAT exports have them)",
        "",
        *[f"- {q}" for q in SAMPLE_QUIRKS],
        "",
    ]
    return "\n".join(lines)


def write_dataset(
    out_dir: str | Path,
    plans: dict[str, tuple[tuple[str, ...], list[ImagePlan]]],
    overwrite: bool = False,
    readme_command: str | None = None,
) -> dict[str, dict]:
    """Write every planned export under `out_dir`, atomically (temp folder, then rename).

    Args:
        out_dir: Output folder; one sub-folder per export.
        plans: From `bundled_sample_plans` or `synthetic_plans`.
        overwrite: Replace an existing `out_dir`.
        readme_command: When given, also write ``README.md`` (the command, counts and quirks).

    Returns:
        ``{export name: COCO document}``.
    """
    out_dir = Path(out_dir)
    docs: dict[str, dict] = {}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; this is a data folder meant to be shared
        for name, (category_names, image_plans) in plans.items():
            docs[name] = write_export(tmp / name, category_names, image_plans)
            logger.info(
                "%s: %d images, %d annotations", name, len(image_plans), len(docs[name]["annotations"])
            )
        if readme_command is not None:
            (tmp / "README.md").write_text(_readme(tmp, readme_command, docs), encoding="utf-8")
    return docs


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--size must look like 320x240, got {text!r}") from err
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError(f"--size must be at least 32x32, got {text!r}")
    return w, h


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per export)")
    parser.add_argument(
        "--num-images", type=int, help="write N clean synthetic images (default: the bundled quirky sample)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=_parse_size, default=(320, 240), help="WxH of synthetic images")
    parser.add_argument("--exports", type=int, default=2, help="number of synthetic exports")
    parser.add_argument("--min-things", type=int, default=1)
    parser.add_argument("--max-things", type=int, default=3)
    parser.add_argument(
        "--things", nargs="+", default=list(THING_LABELS), help="thing labels of synthetic scenes (and tasks)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.num_images is None:
            command = "python dataset_scripts/make_sample.py --out sample_data --overwrite"
            if args.seed:
                command += f" --seed {args.seed}"
            docs = write_dataset(
                args.out, bundled_sample_plans(args.seed), args.overwrite, readme_command=command
            )
        else:
            plans = synthetic_plans(
                args.num_images,
                args.seed,
                args.size,
                args.exports,
                args.min_things,
                args.max_things,
                args.things,
            )
            docs = write_dataset(args.out, plans, args.overwrite)
    except (ValueError, FileExistsError) as err:
        logger.error("error: %s", err)
        return 2
    logger.info("wrote %d exports to %s", len(docs), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
