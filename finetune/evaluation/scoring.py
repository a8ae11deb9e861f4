"""Scoring steps shared by the evaluation during training (`finetune.evaluation.loop`) and the checkpoint
evaluation (`finetune.evaluate`): one image's box-mAP update, and the flat results dictionary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from finetune.evaluation.box_map import BoxMapAccumulator


def update_box_map(
    boxes: BoxMapAccumulator,
    processor: Any,
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    image_id: int,
    size: tuple[int, int],
    gt_segments: Sequence[Mapping[str, Any]],
    to_category: Mapping[int, int],
) -> None:
    """Add one image's DETR detections (every query, threshold 0) and ground-truth boxes to `boxes`.

    Threshold 0: COCOeval ranks by score, low-score detections only matter at high recall.

    Args:
        boxes: The accumulator.
        processor: A `DetrImageProcessor` (``post_process_object_detection``).
        logits: ``(Q, num_labels + 1)`` class logits of the image's queries.
        pred_boxes: ``(Q, 4)`` normalised ``(cx, cy, w, h)`` boxes.
        image_id: The dataset image id.
        size: ``(height, width)`` of the original image (boxes are scored in its pixels).
        gt_segments: The image's ``segments_info`` (``bbox`` ``[x, y, w, h]``, ``category_id``, ``iscrowd``).
        to_category: Model label -> dataset category id (`finetune.inference.label_to_category`).
    """
    single = SimpleNamespace(logits=logits[None].float(), pred_boxes=pred_boxes[None].float())
    (det,) = processor.post_process_object_detection(single, threshold=0.0, target_sizes=[size])
    boxes.update(
        image_id,
        det["boxes"].cpu().numpy(),
        det["scores"].cpu().numpy(),
        np.array([to_category[int(k)] for k in det["labels"].tolist()], dtype=np.int64),
        np.array([s["bbox"] for s in gt_segments], dtype=np.float64).reshape(-1, 4),
        np.array([s["category_id"] for s in gt_segments], dtype=np.int64),
        np.array([s.get("iscrowd", 0) for s in gt_segments], dtype=np.int64),
        size[0],
        size[1],
    )


def flat_results(
    categories: Sequence[Mapping[str, Any]],
    box_summary: Mapping[str, float],
    pq_summary: Mapping[str, Any] | None = None,
    num_images: int | None = None,
) -> dict[str, Any]:
    """The results dictionary of ``all_results.json``.

    Args:
        categories: The dataset categories (``id``, ``name``).
        box_summary: `BoxMapAccumulator.compute()` (``map``, ``map_50``, ...).
        pq_summary: `PQAccumulator.compute()`, if PQ was computed.
        num_images: How many images were scored.

    Returns:
        ``box_map``, ``box_map_50``, ... and, with `pq_summary`, ``pq``, ``sq``, ``rq``, ``pq_things``, ...,
        ``pq_stuff``, ..., ``per_class_pq`` {category name: pq} and ``num_images``.
    """
    results: dict[str, Any] = {f"box_{k}": float(v) for k, v in box_summary.items()}
    if pq_summary is not None:
        for group, suffix in (("All", ""), ("Things", "_things"), ("Stuff", "_stuff")):
            for key in ("pq", "sq", "rq"):
                results[f"{key}{suffix}"] = float(pq_summary[group][key])
        names = {int(c["id"]): c["name"] for c in categories}
        results["per_class_pq"] = {
            names[int(cat)]: float(values["pq"]) for cat, values in pq_summary["per_class"].items()
        }
    if num_images is not None:
        results["num_images"] = num_images
    return results
