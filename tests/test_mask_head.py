"""`finetune.modeling.mask_head` (the split forward that training, inference and the ONNX export share)
against transformers' full `DetrForSegmentation` forward, on a tiny model built in code.

A padded batch of images of different sizes (padding changes the attention bias and the valid cells), every
output the split forward gives compared with the full forward's: class logits, boxes, and the mask of each
selected (image, query) pair, selected in an order that is not the full forward's.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DetrForSegmentation, DetrImageProcessor

from finetune.modeling.mask_head import attention_maps, pair_masks, run_body
from tests.conftest import tiny_detr_config


def _model_and_batch():
    torch.manual_seed(0)
    model = DetrForSegmentation(tiny_detr_config(num_labels=4, num_queries=6)).eval()
    processor = DetrImageProcessor(format="coco_panoptic", size={"shortest_edge": 64, "longest_edge": 96})
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(72, 100), (96, 64), (50, 90)]]
    inputs = processor(images=images, return_tensors="pt")
    assert not inputs["pixel_mask"].bool().all(), "the batch must be padded"
    return model, inputs


def test_split_forward_equals_the_full_forward():
    model, inputs = _model_and_batch()
    with torch.no_grad():
        full = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
        body = run_body(model, inputs["pixel_values"], inputs["pixel_mask"])
        maps = attention_maps(model, body)
        image_index = torch.tensor([2, 0, 1, 0, 2, 1])
        query_index = torch.tensor([5, 0, 3, 4, 1, 0])
        masks = pair_masks(model.mask_head, body.projected, maps, body.fpn_features, image_index, query_index)
        one = pair_masks(model.mask_head, body.projected, maps, body.fpn_features, image_index[:1], query_index[:1])
    torch.testing.assert_close(body.outputs.logits, full.logits, rtol=0, atol=0)
    torch.testing.assert_close(body.outputs.pred_boxes, full.pred_boxes, rtol=0, atol=0)
    assert masks.shape == (6, *full.pred_masks.shape[-2:])
    # Up to oneDNN's batch-size-dependent kernels (module docstring): last-bit differences only.
    torch.testing.assert_close(masks, full.pred_masks[image_index, query_index], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one, masks[:1], rtol=1e-5, atol=1e-5)
    # The padding bias matters: without it the attention leaks into the padded cells.
    assert not body.valid.all()


def test_padding_bias_is_what_transformers_applies():
    """A bias of zeros (no padding) must change the masks of the padded images: the test above would catch
    a bias that ignores the padding."""
    model, inputs = _model_and_batch()
    with torch.no_grad():
        body = run_body(model, inputs["pixel_values"], inputs["pixel_mask"])
        maps = attention_maps(model, body)
        body.valid = torch.ones_like(body.valid)
        unmasked = attention_maps(model, body)
    padded_images = [i for i, m in enumerate(inputs["pixel_mask"].bool()) if not m.all()]
    assert padded_images
    assert not torch.allclose(maps[padded_images], unmasked[padded_images])
