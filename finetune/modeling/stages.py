"""The two training stages of DETR panoptic segmentation: which weights train, and with which loss.

Stage `detection` trains `model.detr` (backbone layer2-4, input projection, transformer, query embeddings,
class and box heads) with the box-only losses; `mask_head` and `bbox_attention` are frozen.
Stage `masks` freezes `model.detr` and trains `bbox_attention` + `mask_head` with the mask losses (focal and
dice on the masks of the queries matched to the targets), as in the DETR paper.

Three choices in stage `masks`, all exact with respect to the gradients of the full
`DetrForSegmentation(..., labels=...)` forward with the same weights in eval mode:

* The class, L1 and GIoU terms of the full panoptic loss (and their auxiliary per-decoder-layer copies) only
  depend on the frozen DETR: they are constants with no gradient, so they are not computed. That saves a
  Hungarian matching (scipy, on the host) per decoder layer and image on every step; one matching per image
  remains, of the final layer, which the mask loss needs. The loss of this stage (logged and returned) is
  `mask_loss_coefficient * loss_mask + dice_loss_coefficient * loss_dice`, not the full panoptic loss.

* The frozen DETR runs under `torch.no_grad()` and in `eval()` mode. No autograd graph is kept for the
  backbone and transformer, and their dropout is off: the mask head learns on the same encoder memory and object
  embeddings it sees at inference, and a given image always yields the same targets for it. (The reference
  implementation keeps dropout on in the frozen transformer; with frozen weights that only adds noise to the
  mask head's inputs.)
* The Hungarian matching only depends on the frozen class and box predictions, and the mask losses only read the
  masks of matched queries, so the mask head (the costly part: one FPN upsampling per query at H/4 x W/4) runs
  on the matched queries only instead of all `num_queries`. `DetrMaskHeadSmallConv` treats each query
  independently (GroupNorm normalises per sample), so the result is the same as running it on all queries.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from transformers import DetrForSegmentation
from transformers.loss.loss_for_object_detection import HungarianMatcher, ImageLoss

from finetune.config import STAGE_NAMES
from finetune.modeling.mask_head import attention_maps, pair_masks, run_body

BACKBONE_PREFIX = "detr.model.backbone."
# DETR trains ResNet layer2-4 only (stem and layer1 stay frozen, as in the paper and in transformers for
# HF backbones); names: timm `layer2..4`, transformers ResNetBackbone `encoder.stages.1..3`.
_TRAINABLE_RESNET_BLOCK = re.compile(r"(^|\.)(layer[234]|stages\.[123])\.")

Labels = list[dict[str, torch.Tensor]]


def _check_stage(stage: str) -> None:
    if stage not in STAGE_NAMES:
        raise ValueError(f"unknown stage {stage!r}: expected one of {STAGE_NAMES}")


def unwrap_model(model: torch.nn.Module) -> DetrForSegmentation:
    """The `DetrForSegmentation` inside an Accelerate/DDP/compiled wrapper (or the model itself)."""
    return extract_model_from_parallel(model, keep_fp32_wrapper=True)


def _backbone_is_resnet(model: DetrForSegmentation) -> bool:
    backbone_config = model.config.backbone_config
    name = getattr(backbone_config, "backbone", None) or getattr(backbone_config, "model_type", "")
    return "resnet" in str(name)


def is_trainable(name: str, stage: str, resnet_backbone: bool = True) -> bool:
    """Whether the parameter `name` (from `DetrForSegmentation.named_parameters()`) trains in `stage`."""
    _check_stage(stage)
    in_detr = name.startswith("detr.")
    if stage == "masks":
        return not in_detr
    if name.startswith(BACKBONE_PREFIX) and resnet_backbone:
        return bool(_TRAINABLE_RESNET_BLOCK.search(name[len(BACKBONE_PREFIX) :]))
    return in_detr


def freeze_for_stage(model: torch.nn.Module, stage: str) -> list[torch.nn.Parameter]:
    """Set `requires_grad` for `stage` and return the trainable parameters.

    detection: `model.detr` trainable (except the ResNet stem and layer1), `mask_head` + `bbox_attention` frozen.
    masks: `mask_head` + `bbox_attention` trainable, all of `model.detr` frozen.

    Args:
        model: a `DetrForSegmentation`, possibly wrapped by Accelerate/DDP.
        stage: one of `finetune.config.STAGE_NAMES`.
    """
    inner = unwrap_model(model)
    resnet = _backbone_is_resnet(inner)
    trainable = []
    for name, parameter in inner.named_parameters():
        train = is_trainable(name, stage, resnet)
        parameter.requires_grad_(train)
        if train:
            trainable.append(parameter)
    return trainable


def param_groups(
    model: torch.nn.Module, stage: str, lr: float, backbone_lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for `stage`, holding only its trainable parameters.

    Applies `freeze_for_stage` first, so that the optimizer and the `requires_grad` flags cannot disagree.
    As in DETR, the backbone gets `backbone_lr` and weight decay applies to every parameter. A
    `backbone_lr` of 0 freezes the backbone (`requires_grad` False: no backbone backward pass at all).

    Returns:
        `[{"params", "lr", "weight_decay", "name"}]`, non-empty groups only: `"transformer"` (stage
        detection) or `"mask_head"` (stage masks), then `"backbone"`.
    """
    inner = unwrap_model(model)
    freeze_for_stage(inner, stage)
    if backbone_lr == 0:
        for name, parameter in inner.named_parameters():
            if name.startswith(BACKBONE_PREFIX):
                parameter.requires_grad_(False)
    backbone, rest = [], []
    for name, parameter in inner.named_parameters():
        if parameter.requires_grad:
            (backbone if name.startswith(BACKBONE_PREFIX) else rest).append(parameter)
    groups = [
        {
            "params": rest,
            "lr": lr,
            "weight_decay": weight_decay,
            "name": "transformer" if stage == "detection" else "mask_head",
        },
        {"params": backbone, "lr": backbone_lr, "weight_decay": weight_decay, "name": "backbone"},
    ]
    return [g for g in groups if g["params"]]


def compute_stage_loss(
    model: torch.nn.Module,
    stage: str,
    pixel_values: torch.Tensor,
    pixel_mask: torch.Tensor | None,
    labels: Labels,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of one batch in `stage`.

    Args:
        model: a `DetrForSegmentation`, possibly wrapped by Accelerate. A DistributedDataParallel wrapper is called
            (its forward is temporarily routed to the stage loss) so that gradients are synchronised; for mixed
            precision, call this inside `accelerator.autocast()`.
        stage: `"detection"` (box-only losses of `model.detr`) or `"masks"` (panoptic loss, DETR frozen).
        pixel_values: (B, 3, H, W) float, normalised.
        pixel_mask: (B, H, W), 1 on real pixels and 0 on padding (None = no padding).
        labels: per image `class_labels` (N,) int64, `boxes` (N, 4) normalised cxcywh, `masks` (N, H, W) bool
            or float (stage `masks`; bool from `PanopticCollator`, converted on the device by the loss); N may be 0.

    Returns:
        `(loss, components)`: the weighted total (scalar, with grad) and its detached components: in stage
        `detection` DETR's `loss_dict` (`loss_ce`, `loss_bbox`, `loss_giou`, `cardinality_error`, per-layer `_i`
        auxiliary losses), in stage `masks` `loss_mask` and `loss_dice` only (the box terms are constants there).
    """
    _check_stage(stage)
    loss_fn = _detection_loss if stage == "detection" else _masks_loss
    inner = unwrap_model(model)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        loss, components = _call_through_wrapper(model, inner, loss_fn, pixel_values, pixel_mask, labels)
    else:
        loss, components = loss_fn(inner, pixel_values, pixel_mask, labels)
    return loss, {k: v.detach() for k, v in components.items()}


def _call_through_wrapper(wrapper: torch.nn.Module, inner: torch.nn.Module, fn: Callable, *args: Any) -> Any:
    """Run `fn(inner, *args)` as the wrapper's forward: DDP prepares its gradient all-reduce only for calls that
    go through `DistributedDataParallel.forward`, which ends by calling `inner(...)`."""
    saved = inner.__dict__.get("forward")  # Accelerate may have patched an instance-level forward
    inner.forward = functools.partial(fn, inner)
    try:
        return wrapper(*args)
    finally:
        if saved is None:
            del inner.forward
        else:
            inner.forward = saved


def _detection_loss(
    model: DetrForSegmentation, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, labels: Labels
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Box-only losses (class CE, L1, GIoU, auxiliary per decoder layer if `config.auxiliary_loss`)."""
    output = model.detr(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
    return output.loss, output.loss_dict


def _masks_loss(
    model: DetrForSegmentation, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, labels: Labels
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mask losses (focal + dice, weighted); gradients reach `bbox_attention` and `mask_head` only.

    See the module docstring: the class and box terms of the full panoptic loss are constants here, so they
    are neither computed nor part of the returned loss.
    """
    config = model.config
    # 1. Frozen DETR, no graph and no loss (see the module docstring), keeping the maps the mask head reads.
    with torch.no_grad(), _eval_mode(model.detr):
        body = run_body(model, pixel_values, pixel_mask)
    detection = body.outputs

    # 2. Attention of each object embedding over the encoder memory: (B, Q, heads, H/32, W/32).
    maps = attention_maps(model, body)

    # 3. Matching (class + box costs of the frozen predictions; the final decoder layer's, the one the mask
    #    loss reads), then the mask head on matched queries only.
    matcher = HungarianMatcher(
        class_cost=config.class_cost, bbox_cost=config.bbox_cost, giou_cost=config.giou_cost
    )
    indices = matcher({"logits": detection.logits, "pred_boxes": detection.pred_boxes}, labels)
    device = maps.device
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
    query_idx = torch.cat([src for src, _ in indices]).to(device)
    if batch_idx.numel() == 0:
        # No target in the batch: run one query anyway so that every trainable parameter is in the graph
        # (backward works, DDP sees all its parameters); the loss does not read it, its gradient is 0.
        batch_idx = query_idx = torch.zeros(1, dtype=torch.long, device=device)
    matched_masks = pair_masks(
        model.mask_head, body.projected, maps, body.fpn_features, batch_idx, query_idx
    )  # (M, H/4, W/4)
    batch_size, num_queries = maps.shape[:2]
    pred_masks = matched_masks.new_zeros(batch_size, num_queries, *matched_masks.shape[-2:])
    pred_masks = pred_masks.index_put((batch_idx, query_idx), matched_masks)

    # 4. Focal + dice on the matched masks with transformers' criterion, reusing the matching above.
    criterion = ImageLoss(
        matcher=_FixedMatcher(indices),
        num_classes=config.num_labels,
        eos_coef=config.eos_coefficient,
        losses=["masks"],
    )
    mask_losses = criterion(
        {"logits": detection.logits, "pred_boxes": detection.pred_boxes, "pred_masks": pred_masks}, labels
    )
    loss = (
        config.mask_loss_coefficient * mask_losses["loss_mask"]
        + config.dice_loss_coefficient * mask_losses["loss_dice"]
    )
    return loss, mask_losses


class _FixedMatcher(torch.nn.Module):
    """A matcher returning indices computed beforehand (the same matching `HungarianMatcher` gives)."""

    def __init__(self, indices: list[tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.indices = indices

    def forward(self, outputs: dict, targets: Labels) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.indices


@contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put `module` in eval mode, restoring each submodule's previous mode afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
