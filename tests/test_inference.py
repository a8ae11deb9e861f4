"""Tests of `finetune.inference` (PanopticPredictor) and of the `image-segmentation` pipeline.

The checkpoint is a tiny random `DetrForSegmentation` saved like `train.py` saves `final/`. To test
stuff fusion deterministically, the model's forward is replaced by hand-made outputs: two queries
predict the stuff class "wall" (top-left and top-right quarters), two the thing "excavator"
(bottom quarters), the other queries "no object".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from finetune.inference import ModelLoadError, PanopticPredictor, render_overlay
from tests.tiny_checkpoints import EXCAVATOR, LABELS, STUFF, WALL, handmade_outputs, save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "final")


def _handmade(monkeypatch, model, predictor=None) -> None:
    """Replace the model's forward by hand-made outputs (and make `predictor` run that full forward)."""
    if predictor is not None:
        monkeypatch.setattr(predictor, "full_forward", True)
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
    _handmade(monkeypatch, predictor.model, predictor)
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
    _handmade(monkeypatch, predictor.model, predictor)
    images = [Image.new("RGB", (96, 64)), Image.new("RGB", (64, 96))]
    batched = predictor.predict(images)
    single = [predictor.predict([image])[0] for image in images]
    for a, b in zip(batched, single, strict=True):
        assert np.array_equal(a.ids, b.ids)
        assert [s["bbox"] for s in a.segments] == [s["bbox"] for s in b.segments]


def test_nothing_above_threshold_gives_an_all_void_map(checkpoint, monkeypatch):
    predictor = PanopticPredictor.from_pretrained(checkpoint, device="cpu")
    _handmade(monkeypatch, predictor.model, predictor)
    [prediction] = predictor.predict([Image.new("RGB", (40, 30))], threshold=1.0)
    assert prediction.segments == []
    assert prediction.ids.shape == (30, 40) and not prediction.ids.any()


def test_overlay_of_a_prediction(checkpoint, monkeypatch):
    predictor = PanopticPredictor.from_pretrained(checkpoint, device="cpu")
    _handmade(monkeypatch, predictor.model, predictor)
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


# --- settings, categories and colours carried by the checkpoint ------------------------------------

CATEGORIES = [  # the dataset categories in label order (ids with gaps, hand-picked colours)
    {"id": 3, "name": "excavator", "isthing": True, "color": [10, 20, 30]},
    {"id": 4, "name": "person", "isthing": True, "color": [40, 50, 60]},
    {"id": 8, "name": "wall", "isthing": False, "color": [70, 80, 90]},
    {"id": 9, "name": "sky", "isthing": False, "color": [100, 110, 120]},
]


def save_final_folder(path: Path, categories: list[dict] = CATEGORIES, **eval_settings) -> Path:
    """A tiny checkpoint written by `finetune.training.export.save_model_folder`, as training writes `final/`."""
    from transformers import DetrForSegmentation, DetrImageProcessor

    from finetune.config import TrainingConfig
    from finetune.training.export import save_model_folder

    source = save_tiny_checkpoint(path.parent / f"{path.name}-source")
    config = TrainingConfig()
    for key, value in eval_settings.items():
        setattr(config.eval, key, value)
    model = DetrForSegmentation.from_pretrained(source)
    processor = DetrImageProcessor.from_pretrained(source)
    return save_model_folder(model, processor, path, config, categories, {"pq": 0.5})


def test_postprocess_settings_resolve_argument_then_checkpoint_then_default():
    from types import SimpleNamespace

    from finetune.config import DEFAULT_MASK_THRESHOLD, DEFAULT_OVERLAP_MASK_AREA_THRESHOLD, DEFAULT_THRESHOLD
    from finetune.inference import postprocess_settings

    saved = SimpleNamespace(panoptic_postprocess={"threshold": 0.3, "mask_threshold": 0.4})
    assert postprocess_settings(saved) == {
        "threshold": 0.3,
        "mask_threshold": 0.4,
        "overlap_mask_area_threshold": DEFAULT_OVERLAP_MASK_AREA_THRESHOLD,
    }
    assert postprocess_settings(saved, threshold=0.6, overlap_mask_area_threshold=0.1) == {
        "threshold": 0.6,
        "mask_threshold": 0.4,
        "overlap_mask_area_threshold": 0.1,
    }
    assert postprocess_settings(saved, threshold=0.0)["threshold"] == 0.0  # 0 is a value, not "unset"
    assert postprocess_settings(SimpleNamespace()) == {
        "threshold": DEFAULT_THRESHOLD,
        "mask_threshold": DEFAULT_MASK_THRESHOLD,
        "overlap_mask_area_threshold": DEFAULT_OVERLAP_MASK_AREA_THRESHOLD,
    }
    with pytest.raises(ValueError, match="threshold must lie in"):
        postprocess_settings(saved, threshold=1.5)


def test_saved_folder_carries_eval_settings_ids_and_colours(tmp_path):
    final = save_final_folder(tmp_path / "final", threshold=0.3, mask_threshold=0.45)
    config = json.loads((final / "config.json").read_text())
    assert config["panoptic_postprocess"]["threshold"] == 0.3
    assert config["category_ids"] == [3, 4, 8, 9]
    assert config["label_colors"] == [c["color"] for c in CATEGORIES]
    assert config["stuff_label_ids"] == STUFF

    predictor = PanopticPredictor.from_pretrained(final, device="cpu")
    assert (predictor.threshold, predictor.mask_threshold) == (0.3, 0.45)
    assert PanopticPredictor.from_pretrained(final, threshold=0.7, device="cpu").threshold == 0.7
    # A checkpoint without saved settings (from elsewhere): the defaults.
    from finetune.config import DEFAULT_THRESHOLD

    old = PanopticPredictor.from_pretrained(save_tiny_checkpoint(tmp_path / "old"), device="cpu")
    assert old.threshold == DEFAULT_THRESHOLD


def test_label_to_category_uses_saved_ids_on_a_reordered_dataset():
    from types import SimpleNamespace

    from finetune.inference import label_to_category

    config = SimpleNamespace(id2label=dict(enumerate(LABELS)), category_ids=[3, 4, 8, 9])
    reordered = [CATEGORIES[i] for i in (2, 0, 3, 1)]  # same table, another order
    assert label_to_category(config, reordered) == {0: 3, 1: 4, 2: 8, 3: 9}
    # Without saved ids: matched by name, whatever the order and ids of the dataset.
    renumbered = [dict(c, id=c["id"] * 10) for c in reordered]
    assert label_to_category(SimpleNamespace(id2label=config.id2label), renumbered) == {
        0: 30,
        1: 40,
        2: 80,
        3: 90,
    }


def test_label_to_category_mismatch_is_a_clear_error():
    from types import SimpleNamespace

    from finetune.inference import LabelMismatchError, label_to_category

    config = SimpleNamespace(id2label=dict(enumerate(LABELS)), category_ids=[3, 4, 8, 9])
    renamed = [dict(c, name="floor") if c["id"] == 8 else c for c in CATEGORIES]
    with pytest.raises(LabelMismatchError, match="model label 2 'wall' is category id 8, but .* is 'floor'"):
        label_to_category(config, renamed)
    with pytest.raises(LabelMismatchError, match="model label 3 'sky' is category id 9, which the dataset"):
        label_to_category(config, CATEGORIES[:3])
    with pytest.raises(LabelMismatchError, match="model label.* 2 'wall' match no dataset category"):
        label_to_category(SimpleNamespace(id2label=config.id2label), renamed)


def _gt_preview_and_overlay(predictor, categories, monkeypatch) -> tuple[np.ndarray, np.ndarray, Any]:
    """The converter's preview of a ground truth equal to the prediction, and the prediction overlay."""
    from dataset_scripts.preview import draw_panoptic_overlay

    _handmade(monkeypatch, predictor.model, predictor)
    image = Image.new("RGB", (96, 64), (128, 128, 128))
    [prediction] = predictor.predict([image])
    by_label = dict(enumerate(categories))
    gt_segments = [  # as cvat_to_panoptic._write_previews builds them from the category table
        {
            "id": seg["id"],
            "name": by_label[seg["label_id"]]["name"],
            "color": tuple(by_label[seg["label_id"]]["color"]),
            "isthing": bool(by_label[seg["label_id"]]["isthing"]),
        }
        for seg in prediction.segments
    ]
    gt = np.asarray(draw_panoptic_overlay(image, prediction.ids, gt_segments))
    pred = np.asarray(render_overlay(image, prediction))
    return gt, pred, prediction


def test_gt_preview_and_prediction_overlay_colour_a_class_alike(tmp_path, monkeypatch):
    from dataset_scripts import cvat_to_panoptic
    from dataset_scripts.preview import distinct_colors

    assert cvat_to_panoptic.distinct_colors is distinct_colors  # one palette
    # 1. Colours saved with the model (the dataset's own, here not the palette's).
    predictor = PanopticPredictor.from_pretrained(save_final_folder(tmp_path / "final"), device="cpu")
    gt, pred, prediction = _gt_preview_and_overlay(predictor, CATEGORIES, monkeypatch)
    # 2. No saved colours: the converter's palette, category i = label i.
    palette = [
        dict(c, color=color) for c, color in zip(CATEGORIES, distinct_colors(len(LABELS)), strict=True)
    ]
    old = PanopticPredictor.from_pretrained(save_tiny_checkpoint(tmp_path / "old"), device="cpu")
    old_gt, old_pred, _ = _gt_preview_and_overlay(old, palette, monkeypatch)
    assert old.label_colors[0] == (242, 36, 36)

    # Pixels away from outlines and thing labels: wall (stuff, top) and an excavator corner.
    for y, x in ((5, 10), (60, 3)):
        assert tuple(gt[y, x]) == tuple(pred[y, x])
        assert tuple(old_gt[y, x]) == tuple(old_pred[y, x])
    assert tuple(pred[5, 10]) == tuple(round(0.5 * 128 + 0.5 * c) for c in CATEGORIES[WALL]["color"])
    assert tuple(pred[5, 10]) != tuple(old_pred[5, 10])
    assert {s["label_id"]: s["color"] for s in prediction.segments}[WALL] == tuple(CATEGORIES[WALL]["color"])
    legend = slice(64, None)
    assert np.array_equal(gt[legend], pred[legend])  # the legend swatches too
