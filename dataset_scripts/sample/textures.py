"""Textures of the sample scenes: full-frame ``(H, W, 3)`` float RGB, painted through a mask.

Stuff: ``sky`` (blue gradient), ``wall`` (beige blotches), ``floor`` (grey concrete slabs),
``ground`` (brown with pebbles). Things: ``brick`` (red running bond, mortar lines), ``tile``
(teal squares, white grout), ``pipe`` (orange shaded cylinder), ``excavator`` (yellow, black
tracks). Every random draw comes from the scene's generator, in a fixed order, so that a scene is
reproducible byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dataset_scripts.sample.geometry import polygon_mask

Box = tuple[float, float, float, float]


def noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """``(H, W, 1)`` Gaussian noise (the same on the three channels)."""
    return rng.normal(0.0, sigma, size=(*shape, 1))


def paint(canvas: np.ndarray, mask: np.ndarray, texture: np.ndarray) -> None:
    """Copy ``texture`` (``(H, W, 3)`` or one ``(3,)`` colour) into ``canvas`` where ``mask`` is set."""
    canvas[mask] = texture[mask] if texture.ndim == 3 else texture


def stuff_texture(label: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A full-frame ``(H, W, 3)`` float texture of one stuff class."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    if label == "sky":
        top, bottom = np.array([90.0, 150.0, 230.0]), np.array([185.0, 215.0, 245.0])
        t = (yy / max(height - 1, 1))[..., None]
        tex = top * (1 - t) + bottom * t + noise(rng, (height, width), 2.0)
    elif label == "wall":
        base = np.array([205.0, 195.0, 170.0]) + rng.uniform(-10, 10, 3)
        blotches = np.sin(xx / 9.0 + rng.uniform(0, 6)) * np.cos(yy / 7.0) * 6.0
        tex = base + blotches[..., None] + noise(rng, (height, width), 5.0)
    elif label == "floor":
        base = np.array([125.0, 125.0, 128.0]) + rng.uniform(-8, 8, 3)
        tex = base + noise(rng, (height, width), 9.0)
        slab = max(width // 5, 8)  # concrete slab joints
        tex[(xx.astype(int) % slab) == 0] *= 0.6
    elif label == "ground":
        base = np.array([135.0, 98.0, 62.0]) + rng.uniform(-8, 8, 3)
        pebbles = (rng.random((height, width)) < 0.03)[..., None] * 40.0
        tex = base + noise(rng, (height, width), 12.0) - pebbles
    else:
        raise ValueError(f"unknown stuff label {label!r}")
    return tex


def brick_texture(rng: np.random.Generator, box: Box, shape: tuple[int, int]) -> np.ndarray:
    """Red bricks in running bond with light mortar lines, aligned on ``box``, over the whole frame."""
    height, width = shape
    x0, y0, x1, y1 = box
    row_h = max((y1 - y0) / rng.integers(3, 6), 4.0)
    brick_w = row_h * 2.2
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    row = np.floor((yy - y0) / row_h)
    shifted = xx - x0 + (row % 2) * brick_w / 2
    col = np.floor(shifted / brick_w)
    shade = ((row * 7 + col * 13) % 5)[..., None] * 6.0
    tex = np.array([170.0, 62.0, 42.0]) + shade + noise(rng, shape, 6.0)
    mortar = (((yy - y0) % row_h) < 1.2) | ((shifted % brick_w) < 1.2)
    tex[mortar] = np.array([215.0, 210.0, 200.0])
    return tex


def tile_texture(rng: np.random.Generator, box: Box, shape: tuple[int, int]) -> np.ndarray:
    """Teal ceramic squares with white grout, aligned on ``box``, over the whole frame."""
    x0, y0, x1, _ = box
    cell = max((x1 - x0) / rng.integers(3, 5), 5.0)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    tex = np.array([40.0, 150.0, 140.0]) + noise(rng, shape, 5.0)
    grout = (((xx - x0) % cell) < 1.5) | (((yy - y0) % cell) < 1.5)
    tex[grout] = np.array([240.0, 240.0, 235.0])
    return tex


def _pipe_texture(
    axis_origin: np.ndarray, normal: np.ndarray, radius: float, shape: tuple[int, int]
) -> np.ndarray:
    """Orange cylinder shading: bright along the axis, dark at the rims."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    across = ((xx - axis_origin[0]) * normal[0] + (yy - axis_origin[1]) * normal[1]) / max(radius, 1.0)
    light = 0.45 + 0.55 * np.cos(np.clip(across, -1.0, 1.0) * math.pi / 2)
    return np.array([235.0, 125.0, 25.0]) * light[..., None] + 10.0


def _excavator_texture(
    rng: np.random.Generator, polygons: Sequence[Sequence[float]], shape: tuple[int, int]
) -> np.ndarray:
    """Yellow paint; the lower 28% of the body part (its first polygon) are black tracks."""
    tex = np.array([240.0, 195.0, 30.0]) + noise(rng, shape, 5.0)
    body = polygon_mask([polygons[0]], *shape)
    yb = np.nonzero(body)[0]
    tracks = body & (np.arange(shape[0])[:, None] >= yb.min() + 0.72 * (yb.max() - yb.min()))
    tex[tracks] = np.array([35.0, 35.0, 38.0])
    return tex


def thing_texture(
    label: str,
    polygons: Sequence[Sequence[float]],
    rng: np.random.Generator,
    shape: tuple[int, int],
    mask: np.ndarray,
) -> np.ndarray:
    """The ``(H, W, 3)`` texture of a placed thing.

    Args:
        label: Thing label.
        polygons: The thing's placed polygon parts (a pipe's vertex order gives its axis).
        rng: The scene's generator.
        shape: ``(H, W)``.
        mask: ``(H, W)`` bool pixels of the thing (non-empty): textures align on its box.
    """
    ys, xs = np.nonzero(mask)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    if label == "brick":
        return brick_texture(rng, box, shape)
    if label == "tile":
        return tile_texture(rng, box, shape)
    if label == "pipe":
        p = np.array(polygons[0]).reshape(-1, 2)
        axis = (p[1] - p[0]) / max(np.linalg.norm(p[1] - p[0]), 1e-6)
        normal = np.array([-axis[1], axis[0]])
        radius = np.linalg.norm(p[3] - p[0]) / 2
        return _pipe_texture((p[0] + p[3]) / 2, normal, radius, shape)
    if label == "excavator":
        return _excavator_texture(rng, polygons, shape)
    raise ValueError(f"unknown thing label {label!r}")
