"""The inference core (`finetune.inference.core`): query selection before the mask head gives the id maps
and segments of transformers' full forward + ``post_process_panoptic_segmentation``.

Tiny random `DetrForSegmentation` models (several seeds); the threshold is set from each model's scores so
that some queries pass and others do not; mixed-size batches exercise the padding crop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import DetrForSegmentation, DetrImageProcessor

from finetune.inference.core import PostProcessing, crop_padding, postprocess_image, predict_batch
from tests.conftest import tiny_detr_config

NUM_LABELS = 5
SIZES = [(72, 100), (96, 64), (80, 80)]  # (height, width) of the original images


def _model(seed: int, num_queries: int = 20) -> DetrForSegmentation:
    torch.manual_seed(seed)
    return DetrForSegmentation(tiny_detr_config(num_labels=NUM_LABELS, num_queries=num_queries)).eval()


def _processor() -> DetrImageProcessor:
    return DetrImageProcessor(format="coco_panoptic", size={"shortest_edge": 64, "longest_edge": 96})


def _inputs(seed: int, sizes=SIZES) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    return _processor()(images=images, return_tensors="pt")


def _quantile_threshold(model, inputs, quantile: float) -> float:
    """A threshold that some object queries pass and others do not (random weights score low)."""
    with torch.no_grad():
        logits = model.detr(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"]).logits
    scores, labels = logits.softmax(-1).max(-1)
    candidates = scores[labels != NUM_LABELS]
    assert candidates.numel() > 3, "the random model predicts 'no object' almost everywhere"
    return float(torch.quantile(candidates, quantile))


def _reference(model, inputs, index: int, post: PostProcessing) -> tuple[np.ndarray, dict]:
    """transformers alone: full forward of the batch, this image's padding cut off, post-processing."""
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
    valid = inputs["pixel_mask"][index]
    valid_size = (int(valid.any(1).sum()), int(valid.any(0).sum()))
    masks = crop_padding(
        outputs.pred_masks[index : index + 1], valid_size, tuple(inputs["pixel_values"].shape[-2:])
    )

    class Single:
        logits = outputs.logits[index : index + 1]
        pred_masks = masks

    (result,) = _processor().post_process_panoptic_segmentation(
        Single,
        threshold=post.threshold,
        mask_threshold=post.mask_threshold,
        overlap_mask_area_threshold=post.overlap_mask_area_threshold,
        label_ids_to_fuse=set(post.label_ids_to_fuse),
        target_sizes=[SIZES[index]],
    )
    ids = result["segmentation"].to(torch.int64).numpy()
    ids[ids < 0] = 0
    best: dict[int, tuple[int, float]] = {}
    for info in result["segments_info"]:
        label, score = best.get(info["id"], (info["label_id"], 0.0))
        assert label == info["label_id"]
        best[info["id"]] = (label, max(score, info["score"]))
    return ids, best


def _run(model, inputs, post, full_forward=False):
    return predict_batch(
        model,
        _processor(),
        inputs["pixel_values"],
        inputs["pixel_mask"],
        SIZES[: inputs["pixel_values"].shape[0]],
        post,
        full_forward=full_forward,
    )


def _assert_same(output, model, inputs, post) -> None:
    for index, prediction in enumerate(output.predictions):
        ids, best = _reference(model, inputs, index, post)
        assert prediction.ids.shape == SIZES[index]
        np.testing.assert_array_equal(prediction.ids, ids)
        assert {s["id"]: (s["label_id"], s["score"]) for s in prediction.segments} == best


@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selected_queries_give_the_full_forward_result(seed, overlap):
    model, inputs = _model(seed), _inputs(seed)
    threshold = _quantile_threshold(model, inputs, 0.6)
    # Random weights score ~0.2 and transformers compares score-weighted mask probabilities with
    # mask_threshold: 0.1 lets segments exist. Labels 3, 4 are stuff (fused).
    post = PostProcessing(threshold, 0.1, overlap, frozenset({3, 4}))
    fast = _run(model, inputs, post)
    full = _run(model, inputs, post, full_forward=True)
    _assert_same(fast, model, inputs, post)
    _assert_same(full, model, inputs, post)
    total = model.config.num_queries * len(SIZES)
    assert 0 < fast.mask_queries < total and full.mask_queries == total
    torch.testing.assert_close(fast.logits, full.logits, rtol=0, atol=0)
    torch.testing.assert_close(fast.pred_boxes, full.pred_boxes, rtol=0, atol=0)
    assert any(s["id"] for p in fast.predictions for s in p.segments)  # something to compare


def test_stuff_fusion_and_every_query_passing():
    model = _model(3)
    with torch.no_grad():  # "no object" never wins: every query passes threshold 0
        model.detr.class_labels_classifier.bias[-1] = -100.0
    inputs = _inputs(3)
    post = PostProcessing(0.0, 0.1, 0.0, frozenset(range(NUM_LABELS)))  # every label fused
    fast = _run(model, inputs, post)
    assert fast.mask_queries == model.config.num_queries * len(SIZES)
    _assert_same(fast, model, inputs, post)
    fused = [s for p in fast.predictions for s in p.segments if s["was_fused"]]
    assert fused
    for prediction in fast.predictions:  # one segment per label
        labels = [s["label_id"] for s in prediction.segments]
        assert len(labels) == len(set(labels))


def test_image_where_no_query_passes():
    model, inputs = _model(4), _inputs(4)
    post = PostProcessing(1.0, 0.1, 0.0, frozenset())  # no probability exceeds 1
    fast = _run(model, inputs, post)
    assert fast.mask_queries == 0
    _assert_same(fast, model, inputs, post)
    assert all(not p.segments and not p.ids.any() for p in fast.predictions)


def test_mixed_batch_one_image_without_segments():
    """Queries pass in one image only: the others get void maps, the one its full-forward map."""
    model, inputs = _model(5), _inputs(5)
    with torch.no_grad():
        logits = model.detr(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"]).logits
    scores, labels = logits.softmax(-1).max(-1)
    scores[labels == NUM_LABELS] = 0
    per_image = scores.max(-1).values
    best = int(per_image.argmax())
    threshold = float(per_image.sort().values[-2])  # only the best image has a query above the runner-up
    post = PostProcessing(threshold, 0.1, 0.0, frozenset({1}))
    fast = _run(model, inputs, post)
    _assert_same(fast, model, inputs, post)
    assert [bool(p.segments) for p in fast.predictions] == [i == best for i in range(len(SIZES))]


def test_resizing_the_id_map_is_exact_only_at_the_same_size():
    """Why the masks, not the id map, are resized to the original size (the module docstring's claim).

    Two queries on a 2x2 mask grid: query 0 wins the top-left cell narrowly, query 1 wins the other three
    by far. Nearest resize to 4x4 gives query 0 the whole top-left 2x2 block; bilinear interpolation
    mixes the cells, and the block's inner pixels go to query 1. At the post-processing size itself
    both are the same.
    """
    logits = torch.tensor([[5.0, -5.0, -5.0], [-5.0, 5.0, -5.0]])  # query 0: label 0, query 1: label 1
    masks = torch.tensor([[[0.0, -10.0], [-10.0, -10.0]], [[-0.5, 10.0], [10.0, 10.0]]])
    exact = PostProcessing(0.5, 0.2, 0.0)
    by_ids = PostProcessing(0.5, 0.2, 0.0, resize_ids=True)
    processor = _processor()
    a = postprocess_image(processor, logits, masks, (2, 2), (2, 2), (4, 4), exact)
    b = postprocess_image(processor, logits, masks, (2, 2), (2, 2), (4, 4), by_ids)
    assert (b.ids[:2, :2] == 1).all() and (a.ids == 1).sum() < 4
    # b is a's argmax at 2x2 blown up: each 2x2 block of b is one id
    assert (b.ids[::2, ::2] == b.ids[1::2, 1::2]).all()
    same_a = postprocess_image(processor, logits, masks, (2, 2), (2, 2), (2, 2), exact)
    same_b = postprocess_image(processor, logits, masks, (2, 2), (2, 2), (2, 2), by_ids)
    np.testing.assert_array_equal(same_a.ids, same_b.ids)
    assert same_a.segments == same_b.segments
