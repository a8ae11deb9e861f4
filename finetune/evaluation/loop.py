"""Evaluation during training: box mAP (stage `detection`) and PQ/SQ/RQ (stage `masks`), multi-process.

Each process evaluates its own shard of the evaluation images (`shard_for_process`, no duplicates) with
the unwrapped model, accumulates statistics, and the accumulators are merged across processes
(`accelerator.reduce` of `PQAccumulator.to_tensor()`, `gather_object` of the box accumulators), so the
result equals a single-process evaluation of the same images.

Predictions are scored against the ground truth of the original dataset rows at the original image
size (the predictions are resized back, as at inference), not against the resized training targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, send_to_device
from torch.utils.data import Subset

from dataset_scripts.panoptic_format import rgb2id
from finetune.config import DEFAULT_MASK_THRESHOLD, DEFAULT_OVERLAP_MASK_AREA_THRESHOLD, DEFAULT_THRESHOLD
from finetune.evaluation.box_map import BoxMapAccumulator
from finetune.evaluation.panoptic_quality import PQAccumulator
from finetune.inference import label_to_category


@dataclass
class EvalContext:
    """What evaluation needs besides the model and the loader.

    Attributes:
        hf_split: the evaluation split (rows of interface 2), for the ground truth.
        categories: `load_categories(...)`; model labels map to them with `label_to_category`.
        image_processor: the `DetrImageProcessor` whose post-processing is used.
        stuff_label_ids: labels fused into one segment per class (`label_ids_to_fuse`).
        threshold, mask_threshold, overlap_mask_area_threshold: panoptic post-processing knobs.
    """

    hf_split: Any
    categories: list[dict]
    image_processor: Any
    stuff_label_ids: set[int]
    threshold: float = DEFAULT_THRESHOLD
    mask_threshold: float = DEFAULT_MASK_THRESHOLD
    overlap_mask_area_threshold: float = DEFAULT_OVERLAP_MASK_AREA_THRESHOLD

    def __post_init__(self) -> None:
        self.row_of_image = {int(image_id): i for i, image_id in enumerate(self.hf_split["image_id"])}


def shard_for_process(dataset: Any, accelerator: Accelerator) -> Subset:
    """Every `num_processes`-th item for this process: disjoint shards covering the dataset once."""
    return Subset(dataset, list(range(accelerator.process_index, len(dataset), accelerator.num_processes)))


def _ground_truth(context: EvalContext, image_id: int) -> tuple[np.ndarray, list[dict]]:
    row = context.hf_split[context.row_of_image[image_id]]
    return rgb2id(np.asarray(row["panoptic"].convert("RGB"))), list(row["segments_info"])


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    accelerator: Accelerator,
    context: EvalContext,
    panoptic: bool,
) -> dict[str, Any]:
    """Evaluate `model` (the unwrapped `DetrForSegmentation`) on this process's `loader` shard.

    Args:
        model: the model; only `model.detr` runs when `panoptic` is False. Its labels map to dataset
            categories with `label_to_category(model.config, context.categories)`.
        loader: batches of `PanopticCollator` over this process's shard (`shard_for_process`).
        accelerator: for the device, autocast and cross-process merging.
        context: ground truth, categories, post-processing settings.
        panoptic: also compute PQ (needs the mask head); box mAP is always computed.

    Returns:
        `box_map`, `box_map_50`, `box_map_75` and, with `panoptic`, `pq`, `sq`, `rq`, `pq_things`, ...,
        `pq_stuff`, ..., `per_class_pq` {category name: pq}; `num_images` evaluated. Same on every process.
    """
    to_category = label_to_category(model.config, context.categories)
    was_training = model.training
    model.eval()
    boxes = BoxMapAccumulator(context.categories)
    pq = PQAccumulator(context.categories) if panoptic else None
    processor = context.image_processor
    for batch in loader:
        batch = send_to_device(batch, accelerator.device)
        with accelerator.autocast():
            net = model if panoptic else model.detr
            outputs = net(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
        padded_h, padded_w = batch["pixel_values"].shape[-2:]
        for i, target in enumerate(batch["labels"]):
            image_id = int(target["image_id"].item())
            orig_h, orig_w = (int(v) for v in target["orig_size"].tolist())
            gt_ids, gt_segments = _ground_truth(context, image_id)
            _update_boxes(boxes, processor, outputs, i, image_id, (orig_h, orig_w), gt_segments, to_category)
            if pq is not None:
                valid_h, valid_w = (int(v) for v in target["size"].tolist())
                mask_h, mask_w = outputs.pred_masks.shape[-2:]
                # pred_masks cover the padded batch: crop this image's part before resizing to its size.
                crop_h = min(mask_h, math.ceil(valid_h * mask_h / padded_h))
                crop_w = min(mask_w, math.ceil(valid_w * mask_w / padded_w))
                single = SimpleNamespace(
                    logits=outputs.logits[i : i + 1].float(),
                    pred_masks=outputs.pred_masks[i : i + 1, :, :crop_h, :crop_w].float(),
                )
                (result,) = processor.post_process_panoptic_segmentation(
                    single,
                    threshold=context.threshold,
                    mask_threshold=context.mask_threshold,
                    overlap_mask_area_threshold=context.overlap_mask_area_threshold,
                    label_ids_to_fuse=context.stuff_label_ids,
                    target_sizes=[(orig_h, orig_w)],
                )
                pred_ids = (
                    result["segmentation"].to(torch.int64).clamp(min=0).cpu().numpy()
                )  # -1 (no segment) -> void
                pred_segments = [
                    {"id": int(s["id"]), "category_id": to_category[int(s["label_id"])]}
                    for s in result["segments_info"]
                ]
                pq.update(pred_ids, pred_segments, gt_ids, gt_segments, image_id=image_id)
    if was_training:
        model.train()
    return _merge_and_compute(accelerator, context, boxes, pq)


def _update_boxes(boxes, processor, outputs, i, image_id, orig_size, gt_segments, to_category) -> None:
    single = SimpleNamespace(
        logits=outputs.logits[i : i + 1].float(), pred_boxes=outputs.pred_boxes[i : i + 1].float()
    )
    # threshold 0: COCOeval ranks by score, low-score detections only matter at high recall.
    (det,) = processor.post_process_object_detection(single, threshold=0.0, target_sizes=[orig_size])
    gt_boxes = np.array([s["bbox"] for s in gt_segments], dtype=np.float64).reshape(-1, 4)
    boxes.update(
        image_id,
        det["boxes"].cpu().numpy(),
        det["scores"].cpu().numpy(),
        np.array([to_category[int(k)] for k in det["labels"].tolist()], dtype=np.int64),
        gt_boxes,
        np.array([s["category_id"] for s in gt_segments], dtype=np.int64),
        np.array([s.get("iscrowd", 0) for s in gt_segments], dtype=np.int64),
        orig_size[0],
        orig_size[1],
    )


def _merge_and_compute(
    accelerator: Accelerator, context: EvalContext, boxes: BoxMapAccumulator, pq: PQAccumulator | None
) -> dict[str, Any]:
    merged_boxes = None
    for part in gather_object([boxes]):
        merged_boxes = part if merged_boxes is None else merged_boxes.merge(part)
    box = merged_boxes.compute()
    results: dict[str, Any] = {f"box_{k}": float(v) for k, v in box.items()}
    if pq is not None:
        total = accelerator.reduce(pq.to_tensor().to(accelerator.device), reduction="sum")
        merged = PQAccumulator.from_tensor(context.categories, total.cpu())
        summary = merged.compute()
        for group, suffix in (("All", ""), ("Things", "_things"), ("Stuff", "_stuff")):
            for key in ("pq", "sq", "rq"):
                results[f"{key}{suffix}"] = float(summary[group][key])
        names = {int(c["id"]): c["name"] for c in context.categories}
        results["per_class_pq"] = {
            names[int(cat)]: float(values["pq"]) for cat, values in summary["per_class"].items()
        }
        results["num_images"] = merged.num_images
    return results
