"""Clip polygons to a rectangle (Sutherland–Hodgman) so that rasterising them is bounded by the image.

pycocotools rasterises a polygon by walking every edge at 1/5-pixel steps in C ``int``s: a vertex
at 1e12 overflows (a crash), one at 2e8 makes it allocate tens of gigabytes. Clipping each part to
the image rectangle expanded by a margin first bounds that work by the image size, whatever the
coordinates. Parts inside the expanded rectangle are returned unchanged (bit-identical
rasterisation); only edges that leave it are replaced by the rectangle's border, outside the image.
"""

from __future__ import annotations

import numpy as np


def _clip_half_plane(points: np.ndarray, axis: int, bound: float, keep_below: bool) -> np.ndarray:
    """One Sutherland–Hodgman pass: keep the side ``coord <= bound`` (or ``>=``) of ``points``."""
    if len(points) == 0:
        return points
    prev = np.roll(points, 1, axis=0)
    values, prev_values = points[:, axis], prev[:, axis]
    inside = values <= bound if keep_below else values >= bound
    prev_inside = prev_values <= bound if keep_below else prev_values >= bound
    crossing = inside != prev_inside
    # Only crossing edges use their intersection, and those have values != prev_values.
    denominator = np.where(crossing, values - prev_values, 1.0)
    t = np.where(crossing, (bound - prev_values) / denominator, 0.0)
    intersection = prev + t[:, None] * (points - prev)
    intersection[:, axis] = bound
    candidates = np.stack([intersection, points], axis=1)  # (n, 2 candidates, xy)
    keep = np.stack([crossing, inside], axis=1)
    return candidates[keep]


def clip_polygon(points: np.ndarray, left: float, top: float, right: float, bottom: float) -> np.ndarray:
    """The part of a polygon inside a rectangle.

    Args:
        points: ``(n, 2)`` float vertices (x, y), finite.
        left: Smallest x kept.
        top: Smallest y kept.
        right: Largest x kept.
        bottom: Largest y kept.

    Returns:
        ``(m, 2)`` vertices of the clipped polygon (``m == 0`` when nothing is inside). Concave
        polygons may come back with zero-width bridges along the border, which add no area.
    """
    inside = (
        (points[:, 0] >= left) & (points[:, 0] <= right) & (points[:, 1] >= top) & (points[:, 1] <= bottom)
    )
    if inside.all():
        return points
    for axis, bound, keep_below in ((0, left, False), (0, right, True), (1, top, False), (1, bottom, True)):
        points = _clip_half_plane(points, axis, bound, keep_below)
    return points


def outline_length(points: np.ndarray) -> float:
    """Length of a closed polygon's outline as pycocotools walks it (sum of max(|dx|, |dy|))."""
    return float(np.abs(np.diff(points, axis=0, append=points[:1])).max(axis=1, initial=0).sum())
