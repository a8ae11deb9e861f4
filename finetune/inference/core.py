"""The inference core: a padded image batch in, one `PanopticPrediction` per image out.

Every tool that turns DETR outputs into panoptic maps goes through `predict_batch`: `PanopticPredictor`
(hence ``finetune/predict.py``, ``finetune/evaluate.py``, ``demo.py``), the evaluation during training
(`finetune.evaluation.loop`), stuff pseudo-labelling (`dataset_scripts.stuff.labeller`) and the benches.
It is the only place that cuts the batch padding off the masks and calls the panoptic post-processing.

Query selection before the mask head. A `DetrForSegmentation` forward runs the mask head (FPN-style
upsampling to 1/4 of the input, per query) for all ``num_queries`` queries, although the post-processing
keeps only the queries whose best class is not "no object" and scores above ``threshold`` (usually ~10 %).
The fast path (default) runs ``model.detr`` (backbone, transformer, class and box heads), selects those
queries exactly as ``post_process_panoptic_segmentation`` does (`selected_queries`), and runs
``bbox_attention`` + ``mask_head`` on the selected (image, query) pairs only, all images of the batch
together (one flat batch of pairs), through `finetune.modeling.mask_head` (shared with training and the
ONNX export). The kept queries' masks are the rows the full forward would compute
(up to float rounding in the last bits, see `finetune.modeling.mask_head`), and the post-processing of transformers then
runs on those queries alone; since it discards the others before looking at any mask, the id maps and
segment lists equal those of the full forward (``full_forward=True`` keeps that path, for comparison;
``tests/test_inference_core.py`` checks the equality).

Resolution. transformers interpolates each kept query's mask (1/4 of the network input) bilinearly to the
requested size and takes the per-pixel argmax there. Taking the argmax at the network's resolution and
resizing the id map instead is NOT equivalent unless both sizes are equal: a bilinearly interpolated
pixel mixes four mask cells, and the argmax of a mixture is not the nearest cell's argmax (counter-example
in the tests). So `PostProcessing.resize_ids` is off by default (exact maps at the original size; its memory
is kept queries x original pixels, ~40 MB for 10 queries on a 1286x800 photo, small next to the mask head
that query selection saves). Stuff pseudo-labelling turns it on: it labels photos of up to ~40 Mpx,
where per-query masks at full size would take gigabytes, and a nearest-resized map is what it always used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np
import torch

from finetune.modeling.mask_head import attention_maps, pair_masks, run_body


@dataclass
class PanopticPrediction:
    """The panoptic segmentation of one image.

    Attributes:
        ids: ``(H, W)`` int64 segment ids at the image's original size; 0 is void.
        segments: One dict per segment id present in `ids`. From the core: ``id``, ``label_id``,
            ``score`` (class probability; the highest of the fused queries for stuff) and ``was_fused``.
            `PanopticPredictor` adds ``category_id`` (dataset category id when the checkpoint knows it, else
            None), ``name``, ``isthing``, ``bbox`` ``[x, y, w, h]`` px, ``area`` px and ``color``.
    """

    ids: np.ndarray
    segments: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class PostProcessing:
    """The settings of transformers' ``post_process_panoptic_segmentation``, plus the output resolution.

    Attributes:
        threshold: Minimum class probability of a query to become a segment.
        mask_threshold: Mask probability above which a pixel belongs to a query's mask.
        overlap_mask_area_threshold: A query's segment is dropped when less than this fraction of its mask
            survives the per-pixel competition with the other queries.
        label_ids_to_fuse: Labels whose queries become one segment per image (stuff).
        resize_ids: Post-process at the image's network input size and resize the id map (nearest) to the
            target size, instead of the per-query masks (exact). See the module docstring.
    """

    threshold: float
    mask_threshold: float
    overlap_mask_area_threshold: float
    label_ids_to_fuse: frozenset[int] = frozenset()
    resize_ids: bool = False


@dataclass
class BatchOutput:
    """What one batch gives.

    Attributes:
        logits: ``(B, Q, num_labels + 1)`` float32 class logits of every query (box mAP ranks them all).
        pred_boxes: ``(B, Q, 4)`` float32 normalised ``(cx, cy, w, h)`` boxes of every query (None when a
            replaced forward gives none).
        predictions: One `PanopticPrediction` per image (empty when masks were not asked for).
        mask_queries: How many (image, query) pairs went through the mask head.
    """

    logits: torch.Tensor
    pred_boxes: torch.Tensor | None
    predictions: list[PanopticPrediction]
    mask_queries: int


def selected_queries(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """The queries ``post_process_panoptic_segmentation`` keeps (``remove_low_and_no_objects``).

    Args:
        logits: ``(B, Q, num_labels + 1)`` class logits; the last class is "no object".
        threshold: Minimum class probability.

    Returns:
        ``(B, Q)`` bool: the most probable class is not "no object" and its probability exceeds `threshold`.
    """
    scores, labels = torch.nn.functional.softmax(logits, dim=-1).max(-1)
    return labels.ne(logits.shape[-1] - 1) & (scores > threshold)


def valid_sizes(pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> list[tuple[int, int]]:
    """Each image's unpadded ``(height, width)`` in the ``(B, 3, H, W)`` batch (padding is bottom/right)."""
    if pixel_mask is None:
        return [tuple(pixel_values.shape[-2:])] * pixel_values.shape[0]  # type: ignore[list-item]
    return [(int(valid.any(1).sum()), int(valid.any(0).sum())) for valid in pixel_mask.bool()]


def crop_padding(masks: torch.Tensor, valid: tuple[int, int], padded: tuple[int, int]) -> torch.Tensor:
    """Cut the batch padding off masks ``(..., h, w)`` that cover a padded ``padded`` input.

    The masks are at a fraction of the input resolution: the crop keeps every mask cell that starts inside
    the image, so that resizing the crop to the image's size maps the image (not image + padding) onto it.
    """
    mask_h, mask_w = masks.shape[-2:]
    crop_h = min(mask_h, math.ceil(valid[0] * mask_h / padded[0]))
    crop_w = min(mask_w, math.ceil(valid[1] * mask_w / padded[1]))
    return masks[..., :crop_h, :crop_w]


def resize_ids_nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``(h, w)`` id map to ``size`` (pixel centres, like PIL's NEAREST)."""
    height, width = ids.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * (height / size[0])).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * (width / size[1])).astype(np.int64), width - 1)
    return ids[rows[:, None], cols[None, :]]


def _segments(segments_info: Sequence[dict[str, Any]], present: set[int] | None) -> list[dict[str, Any]]:
    """One entry per segment id (a fused stuff class lists each of its queries: keep the best score)."""
    merged: dict[int, dict[str, Any]] = {}
    for info in segments_info:
        seg_id = int(info["id"])
        if present is not None and seg_id not in present:  # lost when the id map was resized
            continue
        if seg_id in merged:
            merged[seg_id]["score"] = max(merged[seg_id]["score"], float(info["score"]))
            continue
        merged[seg_id] = {
            "id": seg_id,
            "label_id": int(info["label_id"]),
            "score": float(info["score"]),
            "was_fused": bool(info["was_fused"]),
        }
    return sorted(merged.values(), key=lambda s: s["id"])


def postprocess_image(
    processor: Any,
    logits: torch.Tensor,
    masks: torch.Tensor,
    valid: tuple[int, int],
    padded: tuple[int, int],
    target: tuple[int, int],
    post: PostProcessing,
) -> PanopticPrediction:
    """One image's `PanopticPrediction` from its queries (transformers' post-processing, padding cut off).

    Args:
        processor: A `DetrImageProcessor` (its ``post_process_panoptic_segmentation``).
        logits: ``(K, num_labels + 1)`` class logits of the image's queries (all, or the selected ones).
        masks: ``(K, h, w)`` mask logits of the same queries over the padded batch input.
        valid: The image's unpadded network input size.
        padded: The batch's padded input size.
        target: The size of the returned id map (the original image's).
        post: The settings.
    """
    size = valid if post.resize_ids else target
    single = SimpleNamespace(
        logits=logits[None].float(), pred_masks=crop_padding(masks, valid, padded)[None].float()
    )
    (result,) = processor.post_process_panoptic_segmentation(
        single,
        threshold=post.threshold,
        mask_threshold=post.mask_threshold,
        overlap_mask_area_threshold=post.overlap_mask_area_threshold,
        label_ids_to_fuse=set(post.label_ids_to_fuse),
        target_sizes=[size],
    )
    ids = result["segmentation"].to("cpu", torch.int64).numpy()
    ids[ids < 0] = 0  # transformers marks "no segment at all" with -1
    present = None
    if tuple(size) != tuple(target):
        ids = resize_ids_nearest(ids, target)
        present = set(np.unique(ids).tolist())
    return PanopticPrediction(ids=ids, segments=_segments(result["segments_info"], present))


@dataclass
class Detection:
    """The class and box outputs of a batch, and what the same backend's mask stage reads.

    Attributes:
        logits: ``(B, Q, num_labels + 1)`` class logits.
        pred_boxes: ``(B, Q, 4)`` normalised ``(cx, cy, w, h)`` boxes.
        state: The backend's intermediate maps (a `finetune.modeling.mask_head.DetrBody` for PyTorch, the
            body graph's outputs for ONNX Runtime), passed back to its ``masks``.
    """

    logits: torch.Tensor
    pred_boxes: torch.Tensor | None
    state: Any


class SplitForward(Protocol):
    """A panoptic DETR cut before its mask head: what `predict_batch` runs (PyTorch or ONNX Runtime)."""

    def detect(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> Detection:
        """Backbone, transformer, class and box heads on a padded batch."""
        ...

    def masks(self, detection: Detection, image_index: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
        """``(N, H/4, W/4)`` mask logits of the N (image, query) pairs (N may be 0)."""
        ...


class TorchSplitForward:
    """A `DetrForSegmentation` as a `SplitForward`, through `finetune.modeling.mask_head`."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def detect(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> Detection:
        body = run_body(self.model, pixel_values, pixel_mask)
        return Detection(body.outputs.logits, body.outputs.pred_boxes, body)

    def masks(self, detection: Detection, image_index: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
        body = detection.state
        if image_index.numel() == 0:
            return body.projected.new_zeros((0, *body.fpn_features[-1].shape[-2:]))
        # The attention maps of all queries are cheap (1/32 resolution); only the mask head, where the time
        # goes, sees the selected pairs alone.
        maps = attention_maps(self.model, body)
        return pair_masks(self.model.mask_head, body.projected, maps, body.fpn_features, image_index, query_index)


@torch.inference_mode()
def predict_batch(
    model: Any,
    processor: Any,
    pixel_values: torch.Tensor,
    pixel_mask: torch.Tensor | None,
    target_sizes: Sequence[tuple[int, int]],
    post: PostProcessing,
    full_forward: bool = False,
    masks: bool = True,
) -> BatchOutput:
    """Panoptic predictions of a preprocessed batch (the inference core).

    Args:
        model: A `DetrForSegmentation` in eval mode, or another `SplitForward` (the ONNX export on ONNX
            Runtime, `finetune.export.runtime.OnnxPanopticModel`): the post-processing is the same.
        processor: Its `DetrImageProcessor` (post-processing only; the batch is already preprocessed).
        pixel_values: ``(B, 3, H, W)`` normalised images, padded bottom/right to a common size.
        pixel_mask: ``(B, H, W)`` 1 on image pixels, 0 on padding; None = no padding.
        target_sizes: ``(height, width)`` of each returned id map (the original image sizes).
        post: Post-processing settings.
        full_forward: Run the whole `DetrForSegmentation` (mask head on every query) as transformers does,
            for comparison; the default runs the mask head on the selected queries only (same result).
        masks: False: detection only (``model.detr``), no panoptic predictions.

    Returns:
        The class logits and boxes of every query, and the predictions.

    Raises:
        ValueError: `full_forward` with a model that is not a `DetrForSegmentation`, or as many target sizes
            as images.
    """
    batch = pixel_values.shape[0]
    if len(target_sizes) != batch:
        raise ValueError(f"{len(target_sizes)} target sizes for a batch of {batch} images")
    torch_model = isinstance(model, torch.nn.Module)
    if full_forward and not torch_model:
        raise ValueError("full_forward needs a PyTorch DetrForSegmentation (an ONNX export has no full forward)")
    if torch_model and (full_forward or not masks):
        outputs = (model if masks else model.detr)(pixel_values=pixel_values, pixel_mask=pixel_mask)
        logits = outputs.logits.float()
        boxes = outputs.pred_boxes
        per_image = [(logits[i], outputs.pred_masks[i]) for i in range(batch)] if masks else []
        mask_queries = logits.shape[0] * logits.shape[1] if masks else 0
    else:
        split = TorchSplitForward(model) if torch_model else model
        detection = split.detect(pixel_values, pixel_mask)
        logits = detection.logits.float()
        boxes = detection.pred_boxes
        per_image, mask_queries = [], 0
        if masks:
            keep = selected_queries(logits, post.threshold)
            image_index, query_index = keep.nonzero(as_tuple=True)
            masks_of_pairs = split.masks(detection, image_index, query_index)
            per_image = [(logits[i][keep[i]], masks_of_pairs[image_index == i]) for i in range(batch)]
            mask_queries = int(image_index.numel())
    padded = tuple(pixel_values.shape[-2:])
    predictions = [
        postprocess_image(processor, image_logits, image_masks, valid, padded, tuple(target), post)  # type: ignore[arg-type]
        for (image_logits, image_masks), valid, target in zip(
            per_image, valid_sizes(pixel_values, pixel_mask), target_sizes, strict=False
        )
    ]
    boxes = None if boxes is None else boxes.float()
    return BatchOutput(logits=logits, pred_boxes=boxes, predictions=predictions, mask_queries=mask_queries)


def predict_images(
    model: Any, processor: Any, images: Sequence[Any], post: PostProcessing, full_forward: bool = False
) -> BatchOutput:
    """`predict_batch` on RGB PIL images: preprocessed together (one padded batch) on the model's device.

    Returns:
        As `predict_batch`, with each id map at its image's size.
    """
    device = model.device  # transformers models and `SplitForward` backends both say where inputs go
    inputs = processor(images=list(images), return_tensors="pt").to(device)
    return predict_batch(
        model,
        processor,
        inputs["pixel_values"],
        inputs.get("pixel_mask"),
        [(image.height, image.width) for image in images],
        post,
        full_forward=full_forward,
    )
