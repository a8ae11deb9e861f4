"""Render one procedural construction scene: seed + options -> image + annotated shapes (pure).

A scene is two textured "stuff" bands (``sky`` or ``wall`` above, ``floor`` or ``ground`` below,
split by a slightly slanted horizon) with "things" in front: ``brick`` stacks, ``pipe``, ``tile``
patches and ``excavator`` (a multi-part polygon). Every shape is a COCO polygon first; its pixels
are the pycocotools rasterisation of that polygon, so image and annotation agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dataset_scripts.sample.geometry import (
    THING_OUTLINES,
    pipe_outline,
    place,
    polygon_mask,
    rect,
    round_polygon,
)
from dataset_scripts.sample.textures import noise, paint, stuff_texture, thing_texture, tile_texture

STUFF_LABELS = ("floor", "wall", "sky", "ground")
MATERIAL_LABELS = ("brick", "pipe", "tile")
THING_LABELS = (*MATERIAL_LABELS, "excavator")
TOP_STUFF = ("sky", "wall")
BOTTOM_STUFF = ("floor", "ground")

TARP_COLOUR = np.array([150.0, 40.0, 170.0])  # the unannotated (void) object of `void_patch`


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
        shapes: Annotated regions: the two stuff bands (upper, lower), then the things in paint
            order (back to front: a later thing covers an earlier one where they overlap).
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


def _pair_side(w: int, h: int) -> float:
    return 0.45 * min(w, h)


def _pair_box(w: int, h: int) -> tuple[float, float, float, float]:
    """The lower-right square of the tile + pipe overlap pair."""
    side = _pair_side(w, h)
    return (w - side - 4, h - side - 2, w - 4, h - 2)


def _tarp_box(w: int, h: int) -> tuple[float, float, float, float]:
    return (0, h * 0.8, w * 0.3, h)


def _paint_stuff(
    rng: np.random.Generator, options: SceneOptions, canvas: np.ndarray
) -> tuple[list[Shape], float]:
    """The upper and lower band; returns their shapes and the horizon's highest point (min y).

    The lower band is painted over the whole frame first so that no seam pixel is left unpainted.
    """
    h, w = canvas.shape[:2]
    top = options.top or str(rng.choice(TOP_STUFF))
    bottom = options.bottom or str(rng.choice(BOTTOM_STUFF))
    left_y, right_y = (float(rng.uniform(0.35, 0.55) * h) for _ in range(2))
    top_poly = round_polygon([0, 0, w, 0, w, right_y, 0, left_y])
    bottom_poly = round_polygon([0, left_y, w, right_y, w, h, 0, h])
    paint(canvas, np.ones((h, w), dtype=bool), stuff_texture(bottom, rng, h, w))
    paint(canvas, polygon_mask([top_poly], h, w), stuff_texture(top, rng, h, w))
    if options.void_patch:
        # A purple tarp in the lower-left corner, cut out of the lower band's polygon: void pixels.
        tx1, ty0 = round(w * 0.3, 2), round(h * 0.8, 2)
        bottom_poly = round_polygon([0, left_y, w, right_y, w, h, tx1, h, tx1, ty0, 0, ty0])
        paint(canvas, polygon_mask([rect(0, ty0, tx1, h)], h, w), TARP_COLOUR)
    return [Shape(top, [top_poly]), Shape(bottom, [bottom_poly])], min(left_y, right_y)


def _paint_things(
    rng: np.random.Generator, options: SceneOptions, canvas: np.ndarray, horizon: float
) -> list[Shape]:
    """Random things, larger first so that smaller ones are in front (the rule a converter applies
    when a COCO export has lost the z-order); rejection sampling keeps them apart."""
    h, w = canvas.shape[:2]
    count = int(rng.integers(options.min_things, options.max_things + 1))
    labels = list(options.required)
    while len(labels) < count:
        labels.append(str(rng.choice(options.thing_labels)))
    scale = 1.0 if len(labels) <= 2 else 0.8
    drafts = [(label, *THING_OUTLINES[label](rng, w, h, scale)) for label in labels]
    drafts.sort(key=lambda d: -d[2][0] * d[2][1])
    boxes: list[tuple[float, float, float, float]] = []
    if options.overlap_pair:
        boxes.append(_pair_box(w, h))
    if options.void_patch:
        boxes.append(_tarp_box(w, h))
    shapes = []
    for label, polygons, (bw, bh) in drafts:
        for _ in range(40):
            x = float(rng.uniform(0, max(w - bw, 1)))
            y = float(rng.uniform(horizon - bh * 0.3, max(h - bh, 1)))
            box = (x, y, x + bw, y + bh)
            if all(box[2] <= b[0] or box[0] >= b[2] or box[3] <= b[1] or box[1] >= b[3] for b in boxes):
                break
        boxes.append(box)
        placed = place(polygons, x, y, w, h)
        mask = polygon_mask(placed, h, w)
        if mask.any():
            paint(canvas, mask, thing_texture(label, placed, rng, (h, w), mask))
            shapes.append(Shape(label, placed))
    return shapes


def _paint_overlap_pair(rng: np.random.Generator, canvas: np.ndarray) -> list[Shape]:
    """A large tile patch with a small pipe in front; both polygons are complete (the tile's
    covers the pipe), as a COCO export has them."""
    h, w = canvas.shape[:2]
    pair_box = _pair_box(w, h)
    tx0, ty0, tx1, ty1 = pair_box
    side = _pair_side(w, h)
    tile_poly = [round_polygon(rect(tx0, ty0, tx1, ty1))]
    paint(canvas, polygon_mask(tile_poly, h, w), tile_texture(rng, pair_box, (h, w)))
    pipe_rel, (pw, ph) = pipe_outline(rng, side * 1.3, side * 1.3, 1.0)
    pipe_poly = place(pipe_rel, tx0 + (side - pw) / 2, ty0 + (side - ph) / 2, w, h)
    pipe_mask = polygon_mask(pipe_poly, h, w)
    paint(canvas, pipe_mask, thing_texture("pipe", pipe_poly, rng, (h, w), pipe_mask))
    return [Shape("tile", tile_poly), Shape("pipe", pipe_poly)]


def render_scene(seed: int, options: SceneOptions | None = None) -> Scene:
    """Render one scene: deterministic for a seed and options.

    Args:
        seed: Seed of the scene's random generator.
        options: Size, classes and quirks of the scene (default `SceneOptions()`).

    Returns:
        The ``(H, W, 3)`` uint8 image and its shapes (see `Scene`).
    """
    options = options or SceneOptions()
    rng = np.random.default_rng(seed)
    canvas = np.zeros((options.height, options.width, 3), dtype=np.float64)
    shapes, horizon = _paint_stuff(rng, options, canvas)
    shapes += _paint_things(rng, options, canvas, horizon)
    if options.overlap_pair:
        shapes += _paint_overlap_pair(rng, canvas)
    image = np.clip(canvas + noise(rng, canvas.shape[:2], 3.0), 0, 255).astype(np.uint8)
    return Scene(image=image, shapes=shapes)
