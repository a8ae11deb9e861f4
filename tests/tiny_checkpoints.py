"""A tiny `output_dir/final`-style checkpoint and hand-made model outputs, shared by the inference,
predict, push and demo tests (not a test module).

To test stuff fusion deterministically, `handmade_outputs` replaces the model's forward: two queries
predict the stuff class "wall" (top-left and top-right quarters), two the thing "excavator" (bottom
quarters), the other queries "no object".
"""

from __future__ import annotations

from pathlib import Path

import torch

LABELS = ["excavator", "person", "wall", "sky"]
STUFF = [2, 3]
WALL, EXCAVATOR = 2, 0


def save_tiny_checkpoint(path: Path, num_queries: int = 10) -> Path:
    """Save a tiny `DetrForSegmentation` + processor in the `output_dir/final` layout."""
    from transformers import DetrForSegmentation, DetrImageProcessor

    from tests.conftest import tiny_detr_config

    torch.manual_seed(0)
    config = tiny_detr_config(
        num_labels=len(LABELS),
        num_queries=num_queries,
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    config.stuff_label_ids = STUFF
    DetrForSegmentation(config).save_pretrained(path)
    DetrImageProcessor(
        format="coco_panoptic", size={"shortest_edge": 64, "longest_edge": 96}
    ).save_pretrained(path)
    return path


def handmade_outputs(
    pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, num_queries: int, num_labels: int
):
    """Outputs for a (B, 3, H, W) batch: wall in the two top quarters, excavators in the bottom ones.

    The quarters are those of each image's unpadded area (`pixel_mask`), like a real model's masks
    follow the image content, not the batch padding.
    """
    from transformers.models.detr.modeling_detr import DetrSegmentationOutput

    batch, _, height, width = pixel_values.shape
    mh, mw = height // 4, width // 4
    logits = torch.full((batch, num_queries, num_labels + 1), -10.0)
    logits[..., num_labels] = 10.0  # no object
    masks = torch.full((batch, num_queries, mh, mw), -10.0)
    for index in range(batch):
        valid = pixel_mask[index] if pixel_mask is not None else torch.ones(height, width)
        h, w = int(valid.any(1).sum()) // 4, int(valid.any(0).sum()) // 4
        quarters = [
            (slice(0, h // 2), slice(0, w // 2)),
            (slice(0, h // 2), slice(w // 2, w)),
            (slice(h // 2, h), slice(0, w // 2)),
            (slice(h // 2, h), slice(w // 2, w)),
        ]
        labels = [WALL, WALL, EXCAVATOR, EXCAVATOR]
        for query, (label, (rows, cols)) in enumerate(zip(labels, quarters, strict=True)):
            logits[index, query, num_labels] = -10.0
            logits[index, query, label] = 10.0 - query * 0.1  # distinct scores
            masks[index, query, rows, cols] = 10.0
    return DetrSegmentationOutput(logits=logits, pred_masks=masks)
