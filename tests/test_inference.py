"""Tests of `finetune/inference.py` (PanopticPredictor) and of the `image-segmentation` pipeline.

The checkpoint is a tiny random `DetrForSegmentation` saved like `train.py` saves `final/`. To test
stuff fusion deterministically, the model's forward is replaced by hand-made outputs: two queries
predict the stuff class "wall" (top-left and top-right quarters), two the thing "excavator"
(bottom quarters), the other queries "no object".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.inference import ModelLoadError, PanopticPredictor, render_overlay

LABELS = ["excavator", "person", "wall", "sky"]
STUFF = [2, 3]
WALL, EXCAVATOR = 2, 0


def save_tiny_checkpoint(path: Path, num_queries: int = 10) -> Path:
    """Save a tiny `DetrForSegmentation` + processor in the `output_dir/final` layout."""
    from conftest import tiny_detr_config
    from transformers import DetrForSegmentation, DetrImageProcessor

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


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "final")


def _handmade(monkeypatch, model) -> None:
    config = model.config
    monkeypatch.setattr(
        model,
        "forward",
        lambda pixel_values, pixel_mask=None, **_: handmade_outputs(
            pixel_values, pixel_mask, config.num_queries, config.num_labels
        ),
    )


def test_real_forward_gives_maps_at_original_size(checkpoint):
    predictor = PanopticPredictor.from_pretrained(checkpoint, threshold=0.0, device="cpu", batch_size=2)
    assert predictor.stuff_label_ids == set(STUFF)
    images = [
        Image.new("RGB", (120, 80), (200, 10, 10)),
        Image.new("L", (50, 90), 30),
        Image.new("RGB", (64, 64)),
    ]
    predictions = predictor.predict(images)
    assert len(predictions) == 3
    for image, prediction in zip(images, predictions, strict=True):
        assert prediction.ids.shape == (image.height, image.width)
        assert prediction.ids.dtype == np.int64
        present = set(np.unique(prediction.ids).tolist()) - {0}
        assert present == {s["id"] for s in prediction.segments}
        for seg in prediction.segments:
            assert seg["name"] == LABELS[seg["label_id"]]
            assert seg["isthing"] == (seg["label_id"] not in STUFF)
            assert seg["area"] == int((prediction.ids == seg["id"]).sum())


def test_stuff_is_fused_into_one_segment_per_class(checkpoint, monkeypatch):
    predictor = PanopticPredictor.from_pretrained(checkpoint, device="cpu")
    _handmade(monkeypatch, predictor.model)
    [prediction] = predictor.predict([Image.new("RGB", (96, 64))])
    walls = [s for s in prediction.segments if s["label_id"] == WALL]
    things = [s for s in prediction.segments if s["label_id"] == EXCAVATOR]
    assert len(walls) == 1 and len(things) == 2
    wall = walls[0]
    assert not wall["isthing"] and wall["name"] == "wall"
    assert wall["bbox"] == [0, 0, 96, 32] and wall["area"] == 96 * 32
    assert np.all(prediction.ids[:32] == wall["id"])
    assert wall["score"] == pytest.approx(1.0, abs=1e-6)  # best of the fused queries
    assert {tuple(s["bbox"]) for s in things} == {(0, 32, 48, 32), (48, 32, 48, 32)}
    assert all(s["isthing"] for s in things)


def test_mixed_size_batch_equals_one_image_at_a_time(checkpoint, monkeypatch):
    """Batch padding must not shift the masks: each image is cut out of its padded masks."""
    predictor = PanopticPredictor.from_pretrained(checkpoint, device="cpu", batch_size=2)
    _handmade(monkeypatch, predictor.model)
    images = [Image.new("RGB", (96, 64)), Image.new("RGB", (64, 96))]
    batched = predictor.predict(images)
    single = [predictor.predict([image])[0] for image in images]
    for a, b in zip(batched, single, strict=True):
        assert np.array_equal(a.ids, b.ids)
        assert [s["bbox"] for s in a.segments] == [s["bbox"] for s in b.segments]


def test_nothing_above_threshold_gives_an_all_void_map(checkpoint, monkeypatch):
    predictor = PanopticPredictor.from_pretrained(checkpoint, device="cpu")
    _handmade(monkeypatch, predictor.model)
    [prediction] = predictor.predict([Image.new("RGB", (40, 30))], threshold=1.0)
    assert prediction.segments == []
    assert prediction.ids.shape == (30, 40) and not prediction.ids.any()


def test_overlay_of_a_prediction(checkpoint, monkeypatch):
    predictor = PanopticPredictor.from_pretrained(checkpoint, device="cpu")
    _handmade(monkeypatch, predictor.model)
    image = Image.new("RGB", (96, 64), (128, 128, 128))
    [prediction] = predictor.predict([image])
    overlay = render_overlay(image, prediction)
    assert overlay.width == 96 and overlay.height > 64


def test_missing_pieces_and_unreachable_hub_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        PanopticPredictor.from_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="Hub"):
        PanopticPredictor.from_pretrained("nobody-here/no-such-model-xyz")


# --- the image-segmentation pipeline ------------------------------------------------------------


def test_pipeline_names_segments_with_the_dataset_labels_and_the_fusion_one_liner(checkpoint, monkeypatch):
    """`pipeline()` cannot fuse stuff (it never passes label_ids_to_fuse): show that, and that the
    documented one-liner on the same outputs fuses it."""
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=str(checkpoint), device="cpu")
    _handmade(monkeypatch, segmenter.model)
    image = Image.new("RGB", (96, 64))
    results = segmenter(image, threshold=0.5)
    labels = sorted(r["label"] for r in results)
    assert labels == ["excavator", "excavator", "wall", "wall"]  # names from config.id2label, stuff unfused
    assert all(r["mask"].size == image.size for r in results)

    # The README / model card one-liner: same model, same processor, stuff fused.
    model, processor = segmenter.model, segmenter.image_processor
    inputs = processor(images=image, return_tensors="pt")
    outputs = model(**inputs)
    result = processor.post_process_panoptic_segmentation(
        outputs,
        threshold=0.5,
        label_ids_to_fuse=set(model.config.stuff_label_ids),
        target_sizes=[image.size[::-1]],
    )[0]
    fused = {s["id"]: model.config.id2label[s["label_id"]] for s in result["segments_info"]}
    assert sorted(fused.values()) == ["excavator", "excavator", "wall"]


def test_checkpoint_config_carries_stuff_ids(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["stuff_label_ids"] == STUFF
