"""Panoptic quality (PQ, SQ, RQ) with exactly the semantics of panopticapi's ``pq_compute``.

One vectorised core scores one image; three ways in use it:

* `PQAccumulator`: in memory, fed per image by the training loop; its per-class sums merge
  across processes (`to_tensor` / `from_tensor` for ``accelerator.reduce``).
* the ``evaluate`` metric module in ``finetune/metrics/panoptic_quality``.
* the CLI on COCO-panoptic folders written by any tool::

    python -m finetune.evaluation.panoptic_quality --gt-json G.json --gt-folder G/ --pred-json P.json --pred-folder P/

Semantics (those of panopticapi, ``panopticapi/evaluation.py``):

* a GT and a predicted segment of the same category match when IoU > 0.5, where the union
  leaves out the predicted pixels lying on GT void: ``union = pred_area + gt_area - inter -
  pred_area_on_void``; IoU > 0.5 makes the matching unique;
* GT void pixels (id 0) are ignored; predicted void pixels (id 0) belong to no segment;
* crowd GT segments are never matched; an unmatched prediction whose area lies more than half
  on GT void plus the crowd region of its category is not a false positive (like panopticapi,
  the crowd region of a category is its *last* crowd segment in ``segments_info``);
* per class PQ = sum(IoU of TP) / (TP + FP/2 + FN/2), SQ = sum(IoU) / TP, RQ = TP / (TP + FP/2
  + FN/2); ``All`` / ``Things`` / ``Stuff`` average over the classes with TP + FP + FN > 0;
* in the CLI, GT areas come from the GT JSON (as in panopticapi; a mismatch with the PNG is
  logged at debug level), predicted areas from the PNG. `PQAccumulator` counts both from the arrays, so
  ground truth resized for evaluation stays consistent.

Deliberate differences, all on input that panopticapi mishandles:

* an image without a prediction annotation counts all its (non-crowd) GT segments as false
  negatives, with a warning (panopticapi raises); an empty prediction JSON is an error;
* a group with no class (e.g. no stuff category occurs) gives PQ = SQ = RQ = 0 with ``n = 0``
  (panopticapi divides by zero);
* every inconsistency raises `PanopticEvaluationError` naming the image and the id: a PNG id
  missing from ``segments_info`` or the reverse (GT included: panopticapi ignores such GT),
  unknown category ids, size mismatches, duplicate image or segment ids, missing PNGs.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dataset_scripts import panoptic_format
from dataset_scripts.panoptic_format import VOID_ID, PanopticFormatError

logger = logging.getLogger(__name__)

# Columns of the per-class statistics array.
IOU, TP, FP, FN = range(4)
_STAT_NAMES = ("iou", "tp", "fp", "fn")


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
    """An id map as numpy: ``(H, W)`` integers, or ``(H, W, 3)`` uint8 panoptic-PNG RGB."""
    if hasattr(ids, "detach"):  # torch.Tensor without importing torch
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    is_ids = ids.ndim == 2 and np.issubdtype(ids.dtype, np.integer)
    is_rgb = ids.ndim == 3 and ids.shape[2] == 3 and ids.dtype == np.uint8
    if not (is_ids or is_rgb):
        raise PanopticEvaluationError(
            f"id maps must be (H, W) integer arrays or (H, W, 3) uint8 RGB, got {ids.dtype} {ids.shape}"
        )
    return ids


def _rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 -> ``(...)`` int64 ids ``R + 256 G + 256^2 B``."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _pair_runs(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of pixels (in row-major order) over which both the GT and the predicted id stay the same.

    Segment maps are piecewise constant, so an image of ``H * W`` pixels has only about ``H``
    times the number of segment borders per row of such runs: everything after this function
    works on runs instead of pixels. The only full-size work is two comparisons with the
    neighbouring pixel, done directly on the PNG bytes when the maps come as RGB.

    Args:
        gt, pred: ``(H, W)`` integer id maps or ``(H, W, 3)`` uint8 RGB-encoded id maps.

    Returns:
        ``(gt_ids, pred_ids, lengths)``: three ``(R,)`` int64 arrays, one entry per run.
    """
    if gt.ndim != pred.ndim:  # one RGB, one integer map: decode the RGB one
        gt, pred = (_rgb_to_ids(m) if m.ndim == 3 else m for m in (gt, pred))
    num_pixels = gt.shape[0] * gt.shape[1]
    if num_pixels == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    change = np.empty(num_pixels, dtype=bool)
    change[0] = True
    if gt.ndim == 3:
        g_bytes, p_bytes = gt.reshape(-1), pred.reshape(-1)
        differs = g_bytes[3:] != g_bytes[:-3]  # byte k of pixel i vs byte k of pixel i - 1
        differs |= p_bytes[3:] != p_bytes[:-3]
        differs = differs.reshape(-1, 3)
        np.logical_or(differs[:, 0], differs[:, 1], out=change[1:])
        change[1:] |= differs[:, 2]
    else:
        g_flat, p_flat = gt.reshape(-1), pred.reshape(-1)
        np.not_equal(g_flat[1:], g_flat[:-1], out=change[1:])
        change[1:] |= p_flat[1:] != p_flat[:-1]
    starts = np.flatnonzero(change)
    lengths = np.diff(starts, append=num_pixels)
    if gt.ndim == 3:
        g_ids = _rgb_to_ids(gt.reshape(-1, 3)[starts])
        p_ids = _rgb_to_ids(pred.reshape(-1, 3)[starts])
    else:
        g_ids = gt.reshape(-1)[starts].astype(np.int64)
        p_ids = pred.reshape(-1)[starts].astype(np.int64)
    return g_ids, p_ids, lengths


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
    if (
        gt_areas_from_json
    ):  # panopticapi's union uses the JSON area; a segment without one gets its pixel count
        json_area = np.where(g_area_json >= 0, g_area_json, gt_pixel_area)
        if not np.array_equal(json_area, gt_pixel_area):
            logger.debug("image %s: GT JSON areas differ from the PNG pixel counts; using the JSON", image_id)
        gt_area = json_area

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


# --------------------------------------------------------------------------------------------
# Averaging and tables
# --------------------------------------------------------------------------------------------


def summarize(stats: np.ndarray, categories: CategoryIndex) -> dict[str, Any]:
    """panopticapi's ``pq_average`` for All / Things / Stuff plus ``per_class``.

    Args:
        stats: ``(C, 4)`` per-class sums (columns ``IOU``, ``TP``, ``FP``, ``FN``).

    Returns:
        ``{"All": {pq, sq, rq, n}, "Things": ..., "Stuff": ..., "per_class": {category_id:
        {pq, sq, rq}}}``; a class that never occurs gets zeros and is left out of the averages.
    """
    per_class: dict[int, dict[str, float]] = {}
    occurs = []
    for row, cat_id in enumerate(categories.ids):
        iou, tp, fp, fn = (float(v) for v in stats[row])
        if tp + fp + fn == 0:
            per_class[cat_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            occurs.append(False)
            continue
        denom = tp + 0.5 * fp + 0.5 * fn
        per_class[cat_id] = {"pq": iou / denom, "sq": iou / tp if tp else 0.0, "rq": tp / denom}
        occurs.append(True)
    results: dict[str, Any] = {}
    for group, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        sums = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
        n = 0
        for row, cat_id in enumerate(categories.ids):
            if not occurs[row] or (isthing is not None and bool(categories.isthing[row]) != isthing):
                continue
            n += 1
            for key in sums:
                sums[key] += per_class[cat_id][key]
        results[group] = {key: (value / n if n else 0.0) for key, value in sums.items()} | {"n": n}
    results["per_class"] = per_class
    return results


def format_tables(results: dict[str, Any], stats: np.ndarray, categories: CategoryIndex) -> str:
    """The panopticapi summary table followed by a per-class table (percent)."""
    lines = [f"{'':10s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}", "-" * 38]
    for group in ("All", "Things", "Stuff"):
        r = results[group]
        lines.append(
            f"{group:10s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  {100 * r['rq']:5.1f} {r['n']:5d}"
        )
    width = max([10, *(len(name) for name in categories.names)])
    lines += [
        "",
        f"{'class':{width}s} {'kind':5s} | {'PQ':>5s} {'SQ':>5s} {'RQ':>5s} | {'TP':>5s} {'FP':>5s} {'FN':>5s}",
    ]
    lines.append("-" * len(lines[-1]))
    for row, cat_id in enumerate(categories.ids):
        _, tp, fp, fn = (int(v) for v in stats[row])
        kind = "thing" if categories.isthing[row] else "stuff"
        if tp + fp + fn == 0:
            lines.append(
                f"{categories.names[row]:{width}s} {kind:5s} | {'-':>5s} {'-':>5s} {'-':>5s} | {0:5d} {0:5d} {0:5d}"
            )
            continue
        pc = results["per_class"][cat_id]
        lines.append(
            f"{categories.names[row]:{width}s} {kind:5s} | {100 * pc['pq']:5.1f} {100 * pc['sq']:5.1f} "
            f"{100 * pc['rq']:5.1f} | {tp:5d} {fp:5d} {fn:5d}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# In-memory accumulator
# --------------------------------------------------------------------------------------------


class PQAccumulator:
    """Sums per-class PQ statistics image by image; mergeable across processes.

    Args:
        categories: Dicts with ``id``, ``isthing`` (and ``name`` for tables), e.g.
            ``dataset_scripts.panoptic_builder.load_categories(dataset)``.

    Example:
        >>> acc = PQAccumulator([{"id": 1, "name": "car", "isthing": True}])
        >>> ids = np.array([[0, 7], [7, 7]])
        >>> acc.update(ids, [{"id": 7, "category_id": 1}], ids, [{"id": 7, "category_id": 1, "iscrowd": 0}])
        >>> acc.compute()["All"]["pq"]
        1.0
    """

    def __init__(self, categories: Sequence[dict[str, Any]]):
        self.categories = CategoryIndex(categories)
        self.stats = np.zeros((len(self.categories), 4), dtype=np.float64)
        self.num_images = 0

    def update(
        self,
        pred_ids: Any,
        pred_segments: Sequence[dict[str, Any]],
        gt_ids: Any,
        gt_segments: Sequence[dict[str, Any]],
        image_id: Any = None,
    ) -> None:
        """Add one image.

        Args:
            pred_ids: ``(H, W)`` int numpy array or torch tensor, 0 = void (or the ``(H, W, 3)``
                uint8 RGB of a panoptic PNG).
            pred_segments: Dicts with ``id``, ``category_id`` for every non-zero id of ``pred_ids``.
            gt_ids: ``(H, W)`` ground-truth id map of the same size.
            gt_segments: Dicts with ``id``, ``category_id``, ``iscrowd``; areas are counted
                from ``gt_ids`` (a segment's ``area`` field is not used).
            image_id: For error messages.
        """
        self.stats += image_pq_stats(
            pred_ids, pred_segments, gt_ids, gt_segments, self.categories, image_id=image_id
        )
        self.num_images += 1

    def merge(self, other: PQAccumulator) -> PQAccumulator:
        """Add the sums of ``other`` (same categories) into this accumulator; returns self."""
        if other.categories.ids != self.categories.ids:
            raise PanopticEvaluationError("cannot merge PQ accumulators built on different categories")
        self.stats += other.stats
        self.num_images += other.num_images
        return self

    def to_tensor(self):
        """``(C + 1, 4)`` float64 torch tensor: the per-class sums, last row ``[num_images, 0, 0, 0]``.

        Summing these tensors over processes (``accelerator.reduce(t, "sum")``) and calling
        `from_tensor` gives the statistics of all images.
        """
        import torch

        extra = np.array([[self.num_images, 0, 0, 0]], dtype=np.float64)
        return torch.from_numpy(np.concatenate([self.stats, extra]))

    @classmethod
    def from_tensor(cls, categories: Sequence[dict[str, Any]], tensor: Any) -> PQAccumulator:
        """Inverse of `to_tensor` (also accepts a gathered ``(P, C + 1, 4)`` tensor, summed over P)."""
        acc = cls(categories)
        array = np.asarray(
            tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else tensor, dtype=np.float64
        )
        if array.ndim == 3:
            array = array.sum(axis=0)
        if array.shape != (len(acc.categories) + 1, 4):
            raise PanopticEvaluationError(
                f"expected a ({len(acc.categories) + 1}, 4) tensor for {len(acc.categories)} categories, got {array.shape}"
            )
        acc.stats = array[:-1].copy()
        acc.num_images = int(round(array[-1, 0]))
        return acc

    def compute(self) -> dict[str, Any]:
        """``{"All"|"Things"|"Stuff": {pq, sq, rq, n}, "per_class": {category_id: {pq, sq, rq}}}``."""
        return summarize(self.stats, self.categories)

    def table(self) -> str:
        """Summary and per-class tables as text."""
        return format_tables(self.compute(), self.stats, self.categories)


# --------------------------------------------------------------------------------------------
# COCO-panoptic folders
# --------------------------------------------------------------------------------------------


def read_panoptic_rgb(path: str | os.PathLike, image_id: Any = None) -> np.ndarray:
    """`panoptic_format.read_panoptic_rgb` (``(H, W, 3)`` uint8), its errors naming the image id too.

    The core compares neighbouring pixels on these bytes directly, which is cheaper than first
    combining the three channels into ids for every pixel.

    Raises:
        PanopticEvaluationError: missing or undecodable PNG.
    """
    try:
        return panoptic_format.read_panoptic_rgb(path)
    except (FileNotFoundError, PanopticFormatError) as err:
        raise PanopticEvaluationError(f"image {image_id}: {err}") from err


def _segments_light(segments: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only the keys the core reads (keeps the data sent to worker processes small)."""
    return [
        {
            "id": seg["id"],
            "category_id": seg["category_id"],
            "iscrowd": seg.get("iscrowd", 0),
            "area": seg.get("area", -1),
        }
        for seg in segments
    ]


def _score_task(task: dict[str, Any], categories: CategoryIndex) -> np.ndarray:
    gt_ids = read_panoptic_rgb(task["gt_png"], task["image_id"])
    if task["pred_png"] is None:  # no prediction annotation: an all-void prediction
        pred_ids = np.zeros_like(gt_ids)
    else:
        pred_ids = read_panoptic_rgb(task["pred_png"], task["image_id"])
    return image_pq_stats(
        pred_ids,
        task["pred_segments"],
        gt_ids,
        task["gt_segments"],
        categories,
        task["image_id"],
        gt_areas_from_json=True,
    )


_WORKER_CATEGORIES: CategoryIndex | None = None


def _init_worker(categories: CategoryIndex) -> None:
    global _WORKER_CATEGORIES
    _WORKER_CATEGORIES = categories


def _score_chunk(tasks: list[dict[str, Any]]) -> np.ndarray:
    assert _WORKER_CATEGORIES is not None
    total = np.zeros((len(_WORKER_CATEGORIES), 4), dtype=np.float64)
    for task in tasks:
        total += _score_task(task, _WORKER_CATEGORIES)
    return total


def _load_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """`panoptic_format.load_json` with this module's error type; needs only an ``annotations`` list.

    (Not `load_panoptic_json`: a prediction JSON written by another tool may lack ``images`` or
    ``categories``, as panopticapi allows.)
    """
    try:
        data = panoptic_format.load_json(path)
    except FileNotFoundError:
        raise PanopticEvaluationError(f"{what} JSON not found: {path}") from None
    except PanopticFormatError as err:
        raise PanopticEvaluationError(str(err)) from err
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise PanopticEvaluationError(f"{path}: not a COCO-panoptic file (no 'annotations' list)")
    return data


def _annotations_by_image(data: dict[str, Any], path: Any) -> dict[Any, dict[str, Any]]:
    by_image: dict[Any, dict[str, Any]] = {}
    for ann in data["annotations"]:
        if "image_id" not in ann or "file_name" not in ann:
            raise PanopticEvaluationError(
                f"{path}: an annotation lacks 'image_id' or 'file_name': {str(ann)[:200]}"
            )
        if ann["image_id"] in by_image:
            raise PanopticEvaluationError(f"{path}: duplicate annotation for image id {ann['image_id']}")
        by_image[ann["image_id"]] = ann
    image_ids = [img["id"] for img in data.get("images", [])]
    if len(set(image_ids)) != len(image_ids):
        dup = next(i for i in image_ids if image_ids.count(i) > 1)
        raise PanopticEvaluationError(f"{path}: duplicate image id {dup} in 'images'")
    return by_image


def build_tasks(
    gt_json: dict[str, Any],
    gt_folder: Path,
    pred_json: dict[str, Any],
    pred_folder: Path,
    gt_path: Any,
    pred_path: Any,
) -> list[dict[str, Any]]:
    """Pair GT and prediction annotations per image and check that every PNG exists."""
    gt_by_image = _annotations_by_image(gt_json, gt_path)
    pred_by_image = _annotations_by_image(pred_json, pred_path)
    if not gt_by_image:
        raise PanopticEvaluationError(f"{gt_path}: the ground truth has no annotations")
    if not pred_by_image:
        raise PanopticEvaluationError(
            f"{pred_path}: the prediction JSON has no annotations (nothing to evaluate)"
        )
    extra = set(pred_by_image) - set(gt_by_image)
    if extra:
        logger.warning(
            "%d predicted image(s) have no ground truth and are ignored, e.g. id %s",
            len(extra),
            next(iter(extra)),
        )
    tasks, missing = [], []
    for image_id, gt_ann in gt_by_image.items():
        pred_ann = pred_by_image.get(image_id)
        gt_png = gt_folder / gt_ann["file_name"]
        if not gt_png.is_file():
            raise PanopticEvaluationError(f"image {image_id}: ground-truth PNG not found: {gt_png}")
        pred_png = None
        if pred_ann is None:
            missing.append(image_id)
        else:
            pred_png = pred_folder / pred_ann["file_name"]
            if not pred_png.is_file():
                raise PanopticEvaluationError(f"image {image_id}: predicted PNG not found: {pred_png}")
        tasks.append(
            {
                "image_id": image_id,
                "gt_png": str(gt_png),
                "pred_png": None if pred_png is None else str(pred_png),
                "gt_segments": _segments_light(gt_ann.get("segments_info", [])),
                "pred_segments": []
                if pred_ann is None
                else _segments_light(pred_ann.get("segments_info", [])),
            }
        )
    if missing:
        logger.warning(
            "%d image(s) have no prediction annotation; their ground-truth segments count as false negatives "
            "(e.g. image id %s)",
            len(missing),
            missing[0],
        )
    return tasks


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def evaluate_folders(
    gt_json_file: str | os.PathLike,
    pred_json_file: str | os.PathLike,
    gt_folder: str | os.PathLike | None = None,
    pred_folder: str | os.PathLike | None = None,
    workers: int | None = None,
) -> tuple[dict[str, Any], np.ndarray, CategoryIndex]:
    """PQ of a COCO-panoptic prediction folder against a GT folder (like ``pq_compute``).

    Args:
        gt_json_file: GT panoptic JSON (its ``categories`` define the classes).
        pred_json_file: Prediction panoptic JSON (``annotations`` with ``image_id``,
            ``file_name``, ``segments_info``; ``images``/``categories`` optional).
        gt_folder / pred_folder: PNG folders; default: the JSON path without ``.json``.
        workers: Worker processes (default: CPU count); images are scored in chunks, so memory
            stays at a few id maps per worker.

    Returns:
        ``(results, stats, categories)``: the `summarize` dict, the ``(C, 4)`` sums and the table.
    """
    gt_json_file, pred_json_file = Path(gt_json_file), Path(pred_json_file)
    gt_folder = Path(gt_folder) if gt_folder else gt_json_file.with_suffix("")
    pred_folder = Path(pred_folder) if pred_folder else pred_json_file.with_suffix("")
    for folder, what in ((gt_folder, "ground-truth"), (pred_folder, "prediction")):
        if not folder.is_dir():
            raise PanopticEvaluationError(f"{what} PNG folder not found: {folder}")
    gt_json = _load_json(gt_json_file, "ground-truth")
    pred_json = _load_json(pred_json_file, "prediction")
    if not gt_json.get("categories"):
        raise PanopticEvaluationError(f"{gt_json_file}: no 'categories'")
    categories = CategoryIndex(gt_json["categories"])
    tasks = build_tasks(gt_json, gt_folder, pred_json, pred_folder, gt_json_file, pred_json_file)

    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    stats = np.zeros((len(categories), 4), dtype=np.float64)
    if workers == 1:
        _init_worker(categories)
        stats += _score_chunk(tasks)
    else:
        # Chunks of a few images amortise the inter-process traffic; ordered results keep the
        # floating-point sums reproducible. fork (where available) skips re-importing modules.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        chunk = max(1, min(16, len(tasks) // (4 * workers)))
        with multiprocessing.get_context(method).Pool(workers, _init_worker, (categories,)) as pool:
            for part in pool.imap(_score_chunk, _chunks(tasks, chunk)):
                stats += part
    return summarize(stats, categories), stats, categories


def results_to_json(results: dict[str, Any]) -> dict[str, Any]:
    """The `summarize` dict with string category ids (JSON object keys)."""
    return {
        **{k: v for k, v in results.items() if k != "per_class"},
        "per_class": {str(k): v for k, v in results["per_class"].items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.evaluation.panoptic_quality",
        description="Panoptic quality of COCO-panoptic predictions (panopticapi semantics, faster).",
    )
    parser.add_argument("--gt-json", required=True, help="ground-truth panoptic JSON")
    parser.add_argument("--gt-folder", help="ground-truth PNG folder (default: the JSON path without .json)")
    parser.add_argument("--pred-json", required=True, help="prediction panoptic JSON")
    parser.add_argument("--pred-folder", help="prediction PNG folder (default: the JSON path without .json)")
    parser.add_argument(
        "--json-out", help="write the results (pq_compute layout + per_class) to this JSON file"
    )
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    start = time.perf_counter()
    try:
        results, stats, categories = evaluate_folders(
            args.gt_json, args.pred_json, args.gt_folder, args.pred_folder, workers=args.workers
        )
    except PanopticEvaluationError as err:
        logger.error("%s", err)
        return 2
    tables = format_tables(results, stats, categories)
    print(tables.split("\n\n")[0] if args.quiet else tables)
    if args.json_out:
        from dataset_scripts.atomic_io import atomic_write_json

        atomic_write_json(args.json_out, results_to_json(results), indent=2)
        logger.info("wrote %s", args.json_out)
    logger.info("evaluated %d categories in %.2f s", len(categories), time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
