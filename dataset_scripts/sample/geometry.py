"""COCO polygons of the sample scenes: rasterisation, placement and the thing outlines.

Every outline is made at the origin (`THING_OUTLINES`, one maker per thing label) and then moved
into the picture by `place`. Coordinates are pixel edges in ``[0, W] x [0, H]``, rounded to 2
decimals as CVAT writes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

# A maker returns the outline's polygon parts and its (width, height).
OutlineMaker = Callable[[np.random.Generator, float, float, float], tuple[list[list[float]], tuple]]


def polygon_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons with pycocotools (the rasteriser every COCO tool uses).

    Returns:
        ``(H, W)`` bool mask, the union of the parts.
    """
    rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """The flat polygon of an axis-aligned rectangle."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def round_polygon(points: Sequence[float]) -> list[float]:
    """Coordinates rounded to 2 decimals."""
    return [round(float(v), 2) for v in points]


def place(polygons: list[list[float]], dx: float, dy: float, width: int, height: int) -> list[list[float]]:
    """Shift polygon parts by ``(dx, dy)``, clip them to the picture and round them."""
    placed = []
    for part in polygons:
        xs = [min(max(x + dx, 0.0), float(width)) for x in part[0::2]]
        ys = [min(max(y + dy, 0.0), float(height)) for y in part[1::2]]
        placed.append(round_polygon([v for xy in zip(xs, ys, strict=True) for v in xy]))
    return placed


def _brick(rng: np.random.Generator, w: float, h: float, scale: float) -> tuple[list[list[float]], tuple]:
    bw, bh = rng.uniform(0.22, 0.36) * w * scale, rng.uniform(0.2, 0.34) * h * scale
    return [rect(0, 0, bw, bh)], (bw, bh)


def _tile(rng: np.random.Generator, w: float, h: float, scale: float) -> tuple[list[list[float]], tuple]:
    side = rng.uniform(0.28, 0.42) * min(w, h) * scale
    return [rect(0, 0, side, side)], (side, side)


def pipe_outline(
    rng: np.random.Generator, w: float, h: float, scale: float
) -> tuple[list[list[float]], tuple]:
    """A slanted bar (-20..20 degrees); its vertices are start+n, end+n, end-n, start-n.

    The pipe texture relies on that vertex order to find the pipe's axis and radius.
    """
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


def _beam(a: tuple[float, float], b: tuple[float, float], half: float) -> list[float]:
    """A bar of half-width ``half`` from point ``a`` to point ``b``."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    n = math.hypot(dx, dy)
    nx, ny = -dy / n * half, dx / n * half
    return [a[0] + nx, a[1] + ny, b[0] + nx, b[1] + ny, b[0] - nx, b[1] - ny, a[0] - nx, a[1] - ny]


def _excavator(rng: np.random.Generator, w: float, h: float, scale: float) -> tuple[list[list[float]], tuple]:
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
    parts = [body, _beam(pivot, elbow, t), _beam(elbow, tip, t * 0.8)]
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


THING_OUTLINES: dict[str, OutlineMaker] = {
    "brick": _brick,
    "tile": _tile,
    "pipe": pipe_outline,
    "excavator": _excavator,
}
