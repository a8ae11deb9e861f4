"""The two ONNX graphs of a panoptic DETR, and the files of an export folder.

The model is cut where `finetune.modeling.mask_head` cuts it (the same functions run inside both graphs):

* ``body.onnx``: backbone, transformer, class and box heads, and the attention maps of every query (cheap:
  1/32 resolution), plus the feature maps the mask head reads. Inputs ``pixel_values`` (B, 3, H, W) float32
  and ``pixel_mask`` (B, H, W) int64 (1 on the image, 0 on padding); dynamic B, H, W.
* ``mask_head.onnx``: the mask head on N selected (image, query) pairs (dynamic N >= 1): the body's maps plus
  ``image_index`` and ``query_index`` (N,) int64 in, ``masks`` (N, H/4, W/4) float32 mask logits out.

Between the two, the caller selects the queries (`finetune.inference.core.selected_queries`), so the mask
head, where the time and memory go, never runs on the ~90 % of queries the post-processing discards.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from finetune.export.layout import (
    BODY_FILE,
    BODY_INPUTS,
    BODY_OUTPUTS,
    DEFAULT_OPSET,
    MASK_HEAD_FILE,
    MASK_HEAD_INPUTS,
    MASK_HEAD_OUTPUTS,
)
from finetune.modeling.mask_head import DetrBody, attention_maps, pair_masks, run_body

logger = logging.getLogger(__name__)

class BodyGraph(torch.nn.Module):
    """``body.onnx``: `run_body` + `attention_maps` of a `DetrForSegmentation`."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        body: DetrBody = run_body(self.model, pixel_values, pixel_mask)
        maps = attention_maps(self.model, body)
        return (body.outputs.logits, body.outputs.pred_boxes, maps, body.projected, *body.fpn_features)


class MaskHeadGraph(torch.nn.Module):
    """``mask_head.onnx``: `pair_masks` of a `DetrForSegmentation`'s mask head."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.mask_head = model.mask_head

    def forward(
        self,
        maps: torch.Tensor,
        projected: torch.Tensor,
        res4: torch.Tensor,
        res3: torch.Tensor,
        res2: torch.Tensor,
        image_index: torch.Tensor,
        query_index: torch.Tensor,
    ) -> torch.Tensor:
        return pair_masks(self.mask_head, projected, maps, [res4, res3, res2], image_index, query_index)


def _example_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images, the second padded: the traced graph must not specialise on 'no padding'."""
    # A multiple of 32 that every backbone stage divides; the shapes stay symbolic in the graph.
    pixel_values = torch.randn(2, 3, 128, 160)
    pixel_mask = torch.ones(2, 128, 160, dtype=torch.int64)
    pixel_mask[1, 96:, 100:] = 0
    return pixel_values, pixel_mask


def export_graphs(model: Any, folder: Path, opset: int = DEFAULT_OPSET) -> None:
    """Write ``body.onnx`` and ``mask_head.onnx`` of `model` (fp32) into `folder`.

    Args:
        model: A `DetrForSegmentation` in eval mode on the CPU.
        folder: An existing folder.
        opset: ONNX opset, one of `SUPPORTED_OPSETS`.
    """
    pixel_values, pixel_mask = _example_batch()
    # The wrappers are created in eval mode: torch.onnx.export restores each module's mode afterwards, and a
    # wrapper in training mode would put the whole model back into training mode (dropout on).
    body_graph = BodyGraph(model).eval()
    spatial = {0: "batch", 2: "height", 3: "width"}
    # The body's outputs that the mask head reads, with the same dynamic axes on both graphs (each feature
    # map its own size names: Res4, Res3 and Res2 differ in size).
    shared_axes = {
        "attention_maps": {0: "batch", 3: "map_height", 4: "map_width"},
        "projected": {0: "batch", 2: "map_height", 3: "map_width"},
        **{name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in ("res4", "res3", "res2")},
    }
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about every Python condition it traces; transformers' are on
        # shapes that the graph keeps consistent (key length == mask length), checked by the validation.
        warnings.simplefilter("ignore")
        outputs = body_graph(pixel_values, pixel_mask)
        torch.onnx.export(
            body_graph,
            (pixel_values, pixel_mask),
            str(folder / BODY_FILE),
            dynamo=False,
            opset_version=opset,
            input_names=list(BODY_INPUTS),
            output_names=list(BODY_OUTPUTS),
            dynamic_axes={
                "pixel_values": spatial,
                "pixel_mask": {0: "batch", 1: "height", 2: "width"},
                "logits": {0: "batch"},
                "pred_boxes": {0: "batch"},
                **shared_axes,
            },
        )
        maps, projected, res4, res3, res2 = outputs[2:]
        image_index = torch.tensor([1, 0, 1])
        query_index = torch.tensor([0, 1, 2]) % maps.shape[1]
        pairs = {0: "pairs"}
        torch.onnx.export(
            MaskHeadGraph(model).eval(),
            (maps, projected, res4, res3, res2, image_index, query_index),
            str(folder / MASK_HEAD_FILE),
            dynamo=False,
            opset_version=opset,
            input_names=list(MASK_HEAD_INPUTS),
            output_names=list(MASK_HEAD_OUTPUTS),
            dynamic_axes={
                **shared_axes,
                "image_index": pairs,
                "query_index": pairs,
                "masks": {0: "pairs", 1: "mask_height", 2: "mask_width"},
            },
        )
    logger.info("exported %s and %s (opset %d)", BODY_FILE, MASK_HEAD_FILE, opset)
