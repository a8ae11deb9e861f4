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
* every inconsistency raises `PanopticEvaluationError` naming the file, the image and the id: a PNG
  id missing from ``segments_info`` or the reverse (GT included: panopticapi ignores such GT),
  unknown category ids, size mismatches, duplicate image or segment ids, missing PNGs, and JSON
  entries of the wrong type (``null`` segments, string ``category_id``: panopticapi crashes);
* a prediction JSON that numbers the GT's file names differently (``predict.py`` without
  ``--gt-json`` numbers its images 1..N) is paired with the GT by ``file_name``, with a warning,
  instead of comparing unrelated images (see `finetune.evaluation.pq_inputs`).

Modules: `finetune.evaluation.pq_core` (the per-image core), `pq_summary` (averages, tables),
`pq_inputs` (JSON checks, image pairing), `pq_folders` (the folder evaluation and the CLI); this
module holds the in-memory accumulator and re-exports the public names.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from finetune.evaluation.pq_core import (
    FN,
    FP,
    IOU,
    TP,
    CategoryIndex,
    PanopticEvaluationError,
    image_pq_stats,
)
from finetune.evaluation.pq_folders import build_tasks, evaluate_folders, main
from finetune.evaluation.pq_summary import format_tables, results_to_json, summarize

__all__ = [
    "FN",
    "FP",
    "IOU",
    "TP",
    "CategoryIndex",
    "PQAccumulator",
    "PanopticEvaluationError",
    "build_tasks",
    "evaluate_folders",
    "format_tables",
    "image_pq_stats",
    "main",
    "results_to_json",
    "summarize",
]


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



if __name__ == "__main__":
    sys.exit(main())
