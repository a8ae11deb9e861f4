"""The per-image PQ core: run-length overlap of two segment-id maps, matched as panopticapi does.

`image_pq_stats` is the body of panopticapi's ``pq_compute_single_core`` for one image, computed on
runs of pixels instead of pixels (see `_pair_runs`); `CategoryIndex` maps category ids to the rows
of its ``(C, 4)`` result. Both front ends, the in-memory `PQAccumulator` and the folder CLI
(`finetune.evaluation.pq_folders`), call it. The rules are listed in
``finetune/evaluation/panoptic_quality.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from dataset_scripts.panoptic_format import VOID_ID, rgb2id

# Columns of the per-class statistics array.
IOU, TP, FP, FN = range(4)


class PanopticEvaluationError(ValueError):
    """Inconsistent ground truth or predictions; the message names the image and the id."""


# --------------------------------------------------------------------------------------------
# Categories
# --------------------------------------------------------------------------------------------


class CategoryIndex:
    """Maps COCO category ids (with gaps) to rows 0..C-1 of the statistics array.

    Args:
        categories: Dicts with ``id``, ``isthing`` (bool or 0/1) and optionally ``name``,
            in the order of the statistics rows.
    """

    def __init__(self, categories: Sequence[dict[str, Any]]):
        self.categories = [dict(cat) for cat in categories]
        self.ids = [int(cat["id"]) for cat in self.categories]
        if len(set(self.ids)) != len(self.ids):
            raise PanopticEvaluationError(f"duplicate category ids in {self.ids}")
        self.row = {cat_id: row for row, cat_id in enumerate(self.ids)}
        self.isthing = np.array([bool(cat["isthing"]) for cat in self.categories], dtype=bool)
        self.names = [str(cat.get("name", cat["id"])) for cat in self.categories]

    def __len__(self) -> int:
        return len(self.ids)

    def rows(
        self, category_ids: Iterable[int], image_id: Any, segment_ids: Sequence[int], what: str
    ) -> np.ndarray:
        """Statistics rows of ``category_ids``; an unknown id raises, naming image and segment."""
        rows = []
        for seg_id, cat_id in zip(segment_ids, category_ids, strict=True):
            if isinstance(cat_id, bool) or not isinstance(cat_id, (int, np.integer)):
                raise PanopticEvaluationError(
                    f"image {image_id}: {what} segment {seg_id} has category_id {cat_id!r}, expected an integer"
                )
            row = self.row.get(int(cat_id))
            if row is None:
                raise PanopticEvaluationError(
                    f"image {image_id}: {what} segment {seg_id} has unknown category_id {cat_id} "
                    f"(known: {self.ids})"
                )
            rows.append(row)
        return np.asarray(rows, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Per-image core
# --------------------------------------------------------------------------------------------


def _as_numpy_map(ids: Any) -> np.ndarray:
    """An id map as an ``(H, W)`` integer numpy array.

    Args:
        ids: ``(H, W)`` integer numpy array or torch tensor, or the ``(H, W, 3)`` uint8 RGB of a
            panoptic PNG (decoded here with `rgb2id`).
    """
    if hasattr(ids, "detach"):  # torch.Tensor without importing torch
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim == 3 and ids.shape[2] == 3 and ids.dtype == np.uint8:
        return rgb2id(ids)
    if not (ids.ndim == 2 and np.issubdtype(ids.dtype, np.integer)):
        raise PanopticEvaluationError(
            f"id maps must be (H, W) integer arrays or (H, W, 3) uint8 RGB, got {ids.dtype} {ids.shape}"
        )
    return ids


def _pair_runs(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of pixels (in row-major order) over which both the GT and the predicted id stay the same.

    Segment maps are piecewise constant, so an image of ``H * W`` pixels has only about ``H``
    times the number of segment borders per row of such runs: everything after this function
    works on runs instead of pixels. The only full-size work is two comparisons with the
    neighbouring pixel (cheapest on the uint32 maps of `read_panoptic_ids`).

    Args:
        gt, pred: ``(H, W)`` integer id maps of the same shape.

    Returns:
        ``(gt_ids, pred_ids, lengths)``: three ``(R,)`` int64 arrays, one entry per run.
    """
    num_pixels = gt.shape[0] * gt.shape[1]
    if num_pixels == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    g_flat, p_flat = gt.reshape(-1), pred.reshape(-1)
    change = np.empty(num_pixels, dtype=bool)
    change[0] = True
    np.not_equal(g_flat[1:], g_flat[:-1], out=change[1:])
    change[1:] |= p_flat[1:] != p_flat[:-1]
    starts = np.flatnonzero(change)
    lengths = np.diff(starts, append=num_pixels)
    return g_flat[starts].astype(np.int64), p_flat[starts].astype(np.int64), lengths


def _compact_ids(run_ids: np.ndarray, seg_ids: np.ndarray, image_id: Any, what: str) -> np.ndarray:
    """Replace segment ids by 0 (void) or 1 + their position in sorted ``seg_ids``.

    Args:
        run_ids: ``(R,)`` int64 segment ids (one per run).
        seg_ids: ``(K,)`` sorted, unique, positive segment ids of ``segments_info``.

    Returns:
        ``(R,)`` int64 compact indices in ``0..K``.
    """
    ref = np.concatenate([np.zeros(1, dtype=np.int64), seg_ids])
    pos = np.searchsorted(ref, run_ids)
    np.minimum(pos, len(ref) - 1, out=pos)
    bad = ref[pos] != run_ids
    if bad.any():
        missing = np.unique(run_ids[bad])
        raise PanopticEvaluationError(
            f"image {image_id}: {what} PNG has segment id(s) {missing[:10].tolist()} that are not in "
            "its segments_info" + (" (negative ids are invalid; 0 is void)" if missing[0] < 0 else "")
        )
    return pos


def _segment_arrays(
    segments: Sequence[dict[str, Any]], categories: CategoryIndex, image_id: Any, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sorted ids and, in that order, category rows, crowd flags, JSON areas and list positions."""
    seg_ids = np.asarray([int(seg["id"]) for seg in segments], dtype=np.int64)
    if len(seg_ids) and seg_ids.min() <= VOID_ID:
        raise PanopticEvaluationError(
            f"image {image_id}: {what} segments_info lists segment id {int(seg_ids.min())}; ids must be > 0 "
            "(0 is void)"
        )
    cat_rows = categories.rows((seg["category_id"] for seg in segments), image_id, seg_ids.tolist(), what)
    crowd = np.asarray([bool(seg.get("iscrowd", 0)) for seg in segments], dtype=bool)
    areas = np.asarray([seg.get("area", -1) for seg in segments], dtype=np.float64)
    order = np.argsort(seg_ids, kind="stable")
    seg_ids = seg_ids[order]
    if len(seg_ids) > 1 and (np.diff(seg_ids) == 0).any():
        dup = seg_ids[1:][np.diff(seg_ids) == 0][0]
        raise PanopticEvaluationError(f"image {image_id}: {what} segments_info repeats segment id {int(dup)}")
    return seg_ids, cat_rows[order], crowd[order], areas[order], order


def image_pq_stats(
    pred_ids: Any,
    pred_segments: Sequence[dict[str, Any]],
    gt_ids: Any,
    gt_segments: Sequence[dict[str, Any]],
    categories: CategoryIndex,
    image_id: Any = None,
    gt_areas_from_json: bool = False,
) -> np.ndarray:
    """Per-class PQ statistics of one image (panopticapi's ``pq_compute_single_core`` body).

    Args:
        pred_ids: ``(H, W)`` integer id map of the prediction (0 = void), or its ``(H, W, 3)``
            uint8 panoptic-PNG RGB encoding (what `read_panoptic_rgb` returns).
        pred_segments: Dicts with ``id`` and ``category_id``; every non-zero id of ``pred_ids``
            must be listed, and every listed id must occur.
        gt_ids: ``(H, W)`` integer id map of the ground truth (0 = void).
        gt_segments: Dicts with ``id``, ``category_id``, ``iscrowd`` (default 0) and, when
            ``gt_areas_from_json``, ``area``.
        categories: The category table (rows of the result).
        image_id: Only used in error messages.
        gt_areas_from_json: Use the GT segments' ``area`` (where given) for the IoU union, as
            panopticapi does, instead of counting the pixels of ``gt_ids``.

    Returns:
        ``(C, 4)`` float64 array, columns ``IOU`` (sum of matched IoUs), ``TP``, ``FP``, ``FN``.
    """
    pred_ids = _as_numpy_map(pred_ids)
    gt_ids = _as_numpy_map(gt_ids)
    if pred_ids.shape[:2] != gt_ids.shape[:2]:
        raise PanopticEvaluationError(
            f"image {image_id}: prediction size {pred_ids.shape[:2]} differs from ground truth size "
            f"{gt_ids.shape[:2]} (H, W)"
        )
    g_ids, g_cat, g_crowd, g_area_json, g_order = _segment_arrays(
        gt_segments, categories, image_id, "ground-truth"
    )
    p_ids, p_cat, _, _, _ = _segment_arrays(pred_segments, categories, image_id, "predicted")
    num_g, num_p = len(g_ids), len(p_ids)

    # One weighted bincount over the runs' combined key gives the whole (K_gt + 1) x (K_pred + 1)
    # overlap matrix in pixels; row / column 0 is void.
    g_run, p_run, lengths = _pair_runs(gt_ids, pred_ids)
    key = _compact_ids(g_run, g_ids, image_id, "ground-truth") * (num_p + 1)
    key += _compact_ids(p_run, p_ids, image_id, "predicted")
    conf = np.bincount(key, weights=lengths, minlength=(num_g + 1) * (num_p + 1))
    conf = conf.astype(np.int64).reshape(num_g + 1, num_p + 1)  # float64 sums of ints: exact

    pred_area = conf[:, 1:].sum(axis=0)
    gt_pixel_area = conf[1:, :].sum(axis=1)
    for what, area, seg_ids in (("predicted", pred_area, p_ids), ("ground-truth", gt_pixel_area, g_ids)):
        absent = np.flatnonzero(area == 0)
        if len(absent):
            raise PanopticEvaluationError(
                f"image {image_id}: {what} segment id(s) {seg_ids[absent][:10].tolist()} are in segments_info "
                "but not in the PNG"
            )
    gt_area = gt_pixel_area
    if gt_areas_from_json:  # panopticapi's union uses the JSON area; a segment without one: its pixels
        gt_area = np.where(g_area_json >= 0, g_area_json, gt_pixel_area)

    inter = conf[1:, 1:]
    pred_on_void = conf[0, 1:]
    num_classes = len(categories)
    stats = np.zeros((num_classes, 4), dtype=np.float64)

    candidate = (inter > 0) & (g_cat[:, None] == p_cat[None, :]) & ~g_crowd[:, None]
    union = pred_area[None, :] + gt_area[:, None] - inter - pred_on_void[None, :]
    iou = np.zeros(inter.shape, dtype=np.float64)
    np.divide(inter, union, out=iou, where=candidate)
    match = candidate & (iou > 0.5)
    gt_rows, _ = np.nonzero(match)
    stats[:, TP] = np.bincount(g_cat[gt_rows], minlength=num_classes)
    stats[:, IOU] = np.bincount(g_cat[gt_rows], weights=iou[match], minlength=num_classes)

    gt_matched = match.any(axis=1)
    stats[:, FN] = np.bincount(g_cat[~gt_matched & ~g_crowd], minlength=num_classes)

    # Crowd region of each category: panopticapi keeps the last crowd segment of that category
    # in segments_info order (a dict overwritten in a loop).
    crowd_of_class = np.full(num_classes, -1, dtype=np.int64)
    for sorted_pos in np.argsort(g_order, kind="stable"):  # segments_info order
        if g_crowd[sorted_pos]:
            crowd_of_class[g_cat[sorted_pos]] = sorted_pos
    ignored = pred_on_void.astype(np.float64)
    crowd_row = crowd_of_class[p_cat] if num_p else np.zeros(0, dtype=np.int64)
    has_crowd = crowd_row >= 0
    ignored[has_crowd] += inter[crowd_row[has_crowd], np.flatnonzero(has_crowd)]
    false_pos = ~match.any(axis=0) & ~(ignored / np.maximum(pred_area, 1) > 0.5)
    stats[:, FP] = np.bincount(p_cat[false_pos], minlength=num_classes)
    return stats


