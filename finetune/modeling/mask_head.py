"""DETR's panoptic mask head on selected (image, query) pairs: the one implementation of the split forward.

A `DetrForSegmentation` forward runs ``model.detr`` (backbone, transformer, class and box heads), then
``bbox_attention`` (each query's attention over the encoder memory, 1/32 resolution, cheap) and
``mask_head`` (FPN-style upsampling to 1/4 of the input, per query: where the time and memory go) for every
one of the ``B * num_queries`` (image, query) pairs. Training's masks stage needs the mask head only for the
queries matched to a target, inference only for the queries that can become segments, and the ONNX export
(`finetune.export`) cuts the model at the same place. All three go through this module:

* `run_body`: ``model.detr`` forward, keeping what the mask head reads (backbone feature maps and the
  projected Res5 map, captured by forward hooks: transformers' ``model.detr`` returns neither);
* `attention_maps`: ``bbox_attention`` of every query, with the padding bias exactly as transformers builds it;
* `pair_masks`: ``mask_head`` on N (image, query) pairs, each reading its image's features.

Together they compute the operations of transformers' ``DetrForSegmentation.forward`` with the mask head's
batch of ``B * Q`` pairs replaced by the selected ones (`tests/test_mask_head.py` checks this against the
full forward). ``DetrMaskHeadSmallConv`` treats each pair independently (GroupNorm normalises per sample), so
a pair's mask does not depend on which other pairs run with it, up to float rounding: oneDNN picks
convolution kernels by batch size (measured: the FPN adapter convolutions of a batch under 16 pairs on one
thread differ in the last bits, ~1e-6), which moves a pixel of an id map only on an exact tie.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DetrBody:
    """What ``model.detr`` computes, with the intermediate maps the mask head reads.

    Attributes:
        outputs: ``model.detr``'s output (``logits`` (B, Q, K + 1), ``pred_boxes`` (B, Q, 4),
            ``last_hidden_state`` (B, Q, d), ``encoder_last_hidden_state`` (B, h * w, d), the loss when
            labels were given).
        projected: ``(B, d, h, w)`` the Res5 map after the input projection (h, w = 1/32 of the input).
        fpn_features: ``[Res4, Res3, Res2]`` backbone maps (1/16, 1/8, 1/4 of the input), the mask head's
            FPN inputs in the order it consumes them.
        valid: ``(B, h, w)`` bool, False on the batch padding at 1/32 resolution.
    """

    outputs: Any
    projected: torch.Tensor
    fpn_features: list[torch.Tensor]
    valid: torch.Tensor


@contextmanager
def _captured_outputs(modules: dict[str, torch.nn.Module]) -> Iterator[dict[str, Any]]:
    """Record the output of each module's next forward under its key."""
    captured: dict[str, Any] = {}

    def keep(name: str):
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            captured[name] = output

        return hook

    handles = [module.register_forward_hook(keep(name)) for name, module in modules.items()]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def run_body(
    model: Any, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, labels: Any = None
) -> DetrBody:
    """``model.detr`` forward, keeping the maps the mask head reads.

    Args:
        model: A `DetrForSegmentation` (not a wrapper: unwrap Accelerate/DDP first).
        pixel_values: ``(B, 3, H, W)`` normalised images, padded bottom/right to a common size.
        pixel_mask: ``(B, H, W)`` 1 on image pixels, 0 on padding; None = no padding.
        labels: Passed to ``model.detr`` (its box losses), usually None.
    """
    detr_model = model.detr.model
    with _captured_outputs(
        {"features": detr_model.backbone, "projected": detr_model.input_projection}
    ) as captured:
        outputs = model.detr(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
    features = captured["features"]  # [(feature map, padding mask)] at strides 4, 8, 16, 32
    return DetrBody(
        outputs=outputs,
        projected=captured["projected"],
        fpn_features=[features[2][0], features[1][0], features[0][0]],
        valid=features[-1][1].bool(),
    )


def attention_maps(model: Any, body: DetrBody) -> torch.Tensor:
    """``bbox_attention`` of every query over the encoder memory, as transformers computes it.

    Returns:
        ``(B, Q, heads, h, w)`` attention maps (softmax over each image's unpadded h * w cells).
    """
    batch, d_model, height, width = body.projected.shape
    memory = body.outputs.encoder_last_hidden_state.transpose(1, 2).reshape(batch, d_model, height, width)
    # transformers' bias: 0 on the image, the dtype's minimum on padding (softmax weight 0 there).
    bias = torch.where(
        body.valid[:, None, None],
        torch.zeros((), dtype=memory.dtype, device=memory.device),
        torch.finfo(memory.dtype).min,
    )
    return model.bbox_attention(body.outputs.last_hidden_state, memory, attention_mask=bias)


def pair_masks(
    mask_head: torch.nn.Module,
    projected: torch.Tensor,
    maps: torch.Tensor,
    fpn_features: list[torch.Tensor],
    image_index: torch.Tensor,
    query_index: torch.Tensor,
) -> torch.Tensor:
    """``mask_head`` on the (image, query) pairs ``(image_index[i], query_index[i])`` only.

    Args:
        mask_head: ``model.mask_head`` (a ``DetrMaskHeadSmallConv``).
        projected: `DetrBody.projected` ``(B, d, h, w)``.
        maps: `attention_maps` ``(B, Q, heads, h, w)``.
        fpn_features: `DetrBody.fpn_features`.
        image_index, query_index: ``(N,)`` int64 indices of the pairs; N must be at least 1.

    Returns:
        ``(N, H/4, W/4)`` mask logits, in the order of the pairs.
    """
    masks = mask_head(
        features=projected[image_index],
        attention_masks=maps[image_index, query_index].unsqueeze(1),
        fpn_features=[level[image_index] for level in fpn_features],
    )  # (N, 1, H/4, W/4): the head flattens its (pairs, 1 query) batch
    return masks[:, 0]
