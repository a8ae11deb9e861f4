"""How close two sets of panoptic predictions of the same images are (export validation, tests, bench).

The agreement that matters to a user: the same segments (count and labels per image), the same pixels in
each segment, the same scores; and, as one summary, the PQ of one set scored against the other as ground
truth (1.0 when identical), computed with the project's panopticapi-exact PQ.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from finetune.evaluation.panoptic_quality import PQAccumulator
from finetune.inference.core import PanopticPrediction


def _labels(prediction: PanopticPrediction) -> list[int]:
    return sorted(int(seg["label_id"]) for seg in prediction.segments)


def compare_predictions(
    reference: Sequence[PanopticPrediction],
    candidate: Sequence[PanopticPrediction],
    num_labels: int,
    stuff_label_ids: Collection[int] = (),
) -> dict[str, Any]:
    """Agreement of `candidate` with `reference`, image by image.

    Args:
        reference, candidate: One prediction per image, same images in the same order.
        num_labels: Number of classes (label ids ``0..num_labels-1``).
        stuff_label_ids: Labels counted as stuff by the PQ.

    Returns:
        ``images``; ``same_segments``: images whose segment count and labels agree; ``pixel_agreement``:
        the lowest fraction, over images, of pixels with equal ids (segment ids are numbered in query
        order, so equal segments have equal ids); ``max_score_diff`` over segments matched by id (None when
        no segment is shared); ``segments`` (reference, candidate) totals; ``pq``: PQ of `candidate` against
        `reference` (None when neither has a segment).
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference predictions, {len(candidate)} candidate ones")
    categories = [{"id": label, "isthing": label not in stuff_label_ids} for label in range(num_labels)]
    accumulator = PQAccumulator(categories)
    same, agreement, score_diffs = 0, [], []
    for ref, cand in zip(reference, candidate, strict=True):
        if ref.ids.shape != cand.ids.shape:
            raise ValueError(f"id maps of different sizes: {ref.ids.shape} and {cand.ids.shape}")
        same += _labels(ref) == _labels(cand)
        agreement.append(float(np.mean(ref.ids == cand.ids)))
        scores = {seg["id"]: (seg["label_id"], seg["score"]) for seg in ref.segments}
        for seg in cand.segments:
            if seg["id"] in scores and scores[seg["id"]][0] == seg["label_id"]:
                score_diffs.append(abs(float(seg["score"]) - float(scores[seg["id"]][1])))
        accumulator.update(
            cand.ids,
            [{"id": s["id"], "category_id": s["label_id"]} for s in cand.segments],
            ref.ids,
            [{"id": s["id"], "category_id": s["label_id"], "iscrowd": 0} for s in ref.segments],
        )
    totals = (sum(len(p.segments) for p in reference), sum(len(p.segments) for p in candidate))
    return {
        "images": len(reference),
        "same_segments": same,
        "pixel_agreement": min(agreement, default=1.0),
        "max_score_diff": max(score_diffs) if score_diffs else None,
        "segments": totals,
        "pq": float(accumulator.compute()["All"]["pq"]) if any(totals) else None,
    }
