"""Evaluation during training: box mAP (stage `detection`) and PQ/SQ/RQ (stage `masks`), multi-process.

Each process evaluates its own shard of the evaluation images (`shard_for_process`, no duplicates) with
the unwrapped model, accumulates statistics, and the accumulators are merged across processes
(`accelerator.reduce` of `PQAccumulator.to_tensor()`, `gather_object` of the box accumulators), so the
result equals a single-process evaluation of the same images.

Predictions are scored against the ground truth of the original dataset rows at the original image
size (the predictions are resized back, as at inference), not against the resized training targets.
They come from the inference core (`finetune.inference.core.predict_batch`), as at inference.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
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
from finetune.evaluation.scoring import flat_results, update_box_map
from finetune.inference import label_to_category
from finetune.inference.core import PostProcessing, predict_batch


@dataclass
class EvalContext:
    """What evaluation needs besides the model and the loader.

    Attributes:
        hf_split: the evaluation split (rows of interface 2), for the ground truth.
        categories: `load_categories(...)`; model labels map to them with `label_to_category`.
        image_processor: the `DetrImageProcessor` whose post-processing is used.
        stuff_label_ids: labels fused into one segment per class (`label_ids_to_fuse`).
        threshold, mask_threshold, overlap_mask_area_threshold: panoptic post-processing knobs.
        full_forward: run the mask head on every query (transformers' forward) instead of the selected
            ones (same result, slower; for comparison, and for models that replace the whole forward).
    """

    hf_split: Any
    categories: list[dict]
    image_processor: Any
    stuff_label_ids: set[int]
    threshold: float = DEFAULT_THRESHOLD
    mask_threshold: float = DEFAULT_MASK_THRESHOLD
    overlap_mask_area_threshold: float = DEFAULT_OVERLAP_MASK_AREA_THRESHOLD
    full_forward: bool = False

    def __post_init__(self) -> None:
        self.row_of_image = {int(image_id): i for i, image_id in enumerate(self.hf_split["image_id"])}
        # The ground truth columns only: reading a whole row would decode its full-size photo as well.
        self.ground_truth_rows = self.hf_split.select_columns(["panoptic", "segments_info"])

    @property
    def postprocessing(self) -> PostProcessing:
        """The settings of the inference core."""
        return PostProcessing(
            self.threshold,
            self.mask_threshold,
            self.overlap_mask_area_threshold,
            frozenset(int(i) for i in self.stuff_label_ids),
        )


def shard_for_process(dataset: Any, accelerator: Accelerator) -> Subset:
    """Every `num_processes`-th item for this process: disjoint shards covering the dataset once."""
    return Subset(dataset, list(range(accelerator.process_index, len(dataset), accelerator.num_processes)))


def _ground_truth(context: EvalContext, image_id: int) -> tuple[np.ndarray, list[dict]]:
    row = context.ground_truth_rows[context.row_of_image[image_id]]
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
        model: the model; only `model.detr` runs when `panoptic` is False, and with `panoptic` the mask head
            runs on the queries that can become segments only (`finetune.inference.core.predict_batch`).
            Its labels map to dataset categories with `label_to_category(model.config, context.categories)`.
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
    # Scoring (PNG decode of the ground truth, box mAP and PQ statistics) runs on one background thread while
    # the device predicts the next batch. One worker, jobs in submission order: the accumulators see the images
    # in the order a serial loop would, so the results are identical.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-scoring") as scoring:
        previous: list[Future] = []
        for batch in loader:
            # Only the model's inputs go to the device: the targets (full-resolution masks included) stay on
            # the host, and the ground truth comes from the panoptic PNGs (`_ground_truth`).
            inputs = send_to_device({k: batch[k] for k in ("pixel_values", "pixel_mask")}, accelerator.device)
            sizes = [tuple(int(v) for v in target["orig_size"].tolist()) for target in batch["labels"]]
            with accelerator.autocast():
                output = predict_batch(
                    model,
                    context.image_processor,
                    inputs["pixel_values"],
                    inputs["pixel_mask"],
                    sizes,
                    context.postprocessing,
                    full_forward=context.full_forward,
                    masks=panoptic,
                )
            current = [
                scoring.submit(
                    _score_image,
                    context,
                    boxes,
                    pq,
                    to_category,
                    int(target["image_id"].item()),
                    sizes[i],
                    output.logits[i],
                    output.pred_boxes[i],
                    output.predictions[i] if pq is not None else None,
                )
                for i, target in enumerate(batch["labels"])
            ]
            for job in previous:  # at most two batches in flight; re-raises a scoring error here
                job.result()
            previous = current
        for job in previous:
            job.result()
    if was_training:
        model.train()
    return _merge_and_compute(accelerator, context, boxes, pq)


def _score_image(
    context: EvalContext,
    boxes: BoxMapAccumulator,
    pq: PQAccumulator | None,
    to_category: dict[int, int],
    image_id: int,
    size: tuple[int, int],
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    prediction: Any,
) -> None:
    """Add one image to the accumulators: box mAP always, PQ with `pq` (`prediction`: its panoptic prediction)."""
    gt_ids, gt_segments = _ground_truth(context, image_id)
    update_box_map(boxes, context.image_processor, logits, pred_boxes, image_id, size, gt_segments, to_category)
    if pq is not None:
        pred_segments = [{"id": s["id"], "category_id": to_category[s["label_id"]]} for s in prediction.segments]
        pq.update(prediction.ids, pred_segments, gt_ids, gt_segments, image_id=image_id)


def _merge_and_compute(
    accelerator: Accelerator, context: EvalContext, boxes: BoxMapAccumulator, pq: PQAccumulator | None
) -> dict[str, Any]:
    merged_boxes = None
    for part in gather_object([boxes]):
        merged_boxes = part if merged_boxes is None else merged_boxes.merge(part)
    if pq is None:
        return flat_results(context.categories, merged_boxes.compute())
    total = accelerator.reduce(pq.to_tensor().to(accelerator.device), reduction="sum")
    merged = PQAccumulator.from_tensor(context.categories, total.cpu())
    return flat_results(context.categories, merged_boxes.compute(), merged.compute(), merged.num_images)
