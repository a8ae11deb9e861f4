"""Model initialisation: warm start from a (tiny, saved-in-the-test) panoptic checkpoint, random init, offline."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from transformers import DetrForSegmentation

from finetune.modeling import (
    CLASS_HEAD_KEYS,
    QUICKSTART_CONFIG,
    ModelUnavailableError,
    label_space,
    load_model,
    map_class_head_rows,
)

# A COCO-panoptic-like label space (with the gaps COCO fills with "N/A").
PRETRAINED_LABELS = [
    "N/A",
    "person",
    "car",
    "N/A",
    "truck",
    "wall-other-merged",
    "floor-wood",
    "sky-other-merged",
]
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": True},
    {"id": 2, "name": "excavator", "isthing": True},
    {"id": 7, "name": "wall", "isthing": False},
    {"id": 9, "name": "truck", "isthing": True},
    {"id": 11, "name": "sky-other-merged", "isthing": False},
]
CLASS_MAP = {"wall": "wall-other-merged"}


@pytest.fixture
def pretrained_dir(tmp_path, make_tiny_detr_config):
    """A tiny 'pretrained' DetrForSegmentation with a COCO-like label space, saved like a Hub checkpoint."""
    torch.manual_seed(123)
    config = make_tiny_detr_config(
        num_labels=len(PRETRAINED_LABELS),
        id2label=dict(enumerate(PRETRAINED_LABELS)),
        label2id={name: i for i, name in enumerate(PRETRAINED_LABELS)},
    )
    model = DetrForSegmentation(config)
    with torch.no_grad():  # "trained" weights: non-zero biases everywhere, distinct from any fresh init
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    model.save_pretrained(tmp_path / "pretrained")
    return tmp_path / "pretrained"


def test_label_space():
    id2label, label2id, stuff = label_space(CATEGORIES)
    assert id2label == {0: "person", 1: "excavator", 2: "wall", 3: "truck", 4: "sky-other-merged"}
    assert label2id == {name: i for i, name in id2label.items()}
    assert stuff == [2, 4]
    with pytest.raises(ValueError, match="unique"):
        label_space([*CATEGORIES, {"id": 12, "name": "wall", "isthing": False}])
    with pytest.raises(ValueError, match="no categories"):
        label_space([])


def test_map_class_head_rows():
    new = {0: "person", 1: "excavator", 2: "wall", 3: "truck"}
    old = dict(enumerate(PRETRAINED_LABELS))
    assert map_class_head_rows(new, old) == {0: 1, 3: 4}
    assert map_class_head_rows(new, old, CLASS_MAP) == {0: 1, 2: 5, 3: 4}
    assert map_class_head_rows({0: "N/A"}, old) == {0: 0}  # duplicates: first occurrence
    with pytest.raises(ValueError, match="not in the dataset"):
        map_class_head_rows(new, old, {"crane": "truck"})
    with pytest.raises(ValueError, match="wall-other-merged"):
        map_class_head_rows(new, old, {"wall": "wall-other"})  # a typo: the close match is suggested


def test_warm_start_from_checkpoint(pretrained_dir, caplog):
    pretrained = DetrForSegmentation.from_pretrained(pretrained_dir)
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="finetune.modeling"):
        model = load_model(str(pretrained_dir), CATEGORIES, class_map=CLASS_MAP)

    assert isinstance(model, DetrForSegmentation)
    assert model.config.id2label == {i: c["name"] for i, c in enumerate(CATEGORIES)}
    assert model.config.label2id["truck"] == 3
    assert model.config.stuff_label_ids == [2, 4]
    assert model.config.auxiliary_loss is True

    old, new = pretrained.state_dict(), model.state_dict()
    assert set(old) == set(new)
    for key in old:
        if key not in CLASS_HEAD_KEYS:
            assert torch.equal(old[key], new[key]), key

    old_head, new_head = pretrained.detr.class_labels_classifier, model.detr.class_labels_classifier
    assert new_head.out_features == len(CATEGORIES) + 1
    mapped = {0: 1, 2: 5, 3: 4, 4: 7}  # person, wall -> wall-other-merged, truck, sky-other-merged
    for new_row, old_row in mapped.items():
        assert torch.equal(new_head.weight[new_row], old_head.weight[old_row])
        assert torch.equal(new_head.bias[new_row], old_head.bias[old_row])
    assert torch.equal(new_head.weight[-1], old_head.weight[-1])  # no-object
    assert torch.equal(new_head.bias[-1], old_head.bias[-1])
    # "excavator" (label 1) is freshly initialised: unlike every pretrained row
    for old_row in range(old_head.out_features):
        assert not torch.allclose(new_head.weight[1], old_head.weight[old_row])
    assert new_head.weight[1].std() < 0.1  # the model's init (std init_std=0.02), not a copy

    table = caplog.text
    assert "4/5 classes warm-started" in table
    assert "wall-other-merged (row 5)" in table and "fresh init" in table


def test_warm_start_config_overrides_apply(pretrained_dir):
    model = load_model(
        str(pretrained_dir), CATEGORIES, config_overrides={"dice_loss_coefficient": 3, "dropout": 0.0}
    )
    assert model.config.dice_loss_coefficient == 3
    assert model.config.dropout == 0.0
    with pytest.raises(ValueError, match="architecture"):
        load_model(str(pretrained_dir), CATEGORIES, config_overrides={"num_queries": 7})


def test_stuff_label_ids_survive_save_and_reload(tmp_path, pretrained_dir):
    model = load_model(str(pretrained_dir), CATEGORIES, class_map=CLASS_MAP)
    model.save_pretrained(tmp_path / "final")
    reloaded = DetrForSegmentation.from_pretrained(tmp_path / "final")
    assert reloaded.config.stuff_label_ids == [2, 4]
    assert reloaded.config.id2label == model.config.id2label
    # and it can be the starting point of another fine-tuning (same label space: every row copied)
    again = load_model(str(tmp_path / "final"), CATEGORIES)
    assert torch.equal(again.detr.class_labels_classifier.weight, model.detr.class_labels_classifier.weight)


def test_random_init_from_config_overrides(make_tiny_detr_config):
    overrides = make_tiny_detr_config().to_dict()
    keep = ("backbone_config", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads")
    overrides = {k: overrides[k] for k in keep} | {
        "num_queries": 7,
        "encoder_ffn_dim": 32,
        "decoder_ffn_dim": 32,
    }
    model = load_model(None, CATEGORIES, config_overrides=overrides)
    assert model.config.num_labels == len(CATEGORIES)
    assert model.detr.class_labels_classifier.out_features == len(CATEGORIES) + 1
    assert model.config.num_queries == 7 and model.config.d_model == 64
    assert model.config.auxiliary_loss is True
    assert model.config.stuff_label_ids == [2, 4]
    assert model.config.backbone_config.use_pretrained_backbone is False
    assert not load_model(
        None, CATEGORIES, config_overrides={**overrides, "auxiliary_loss": False}
    ).config.auxiliary_loss
    with pytest.raises(ValueError, match="label space"):
        load_model(None, CATEGORIES, config_overrides={**overrides, "num_labels": 3})


def test_offline_hub_id_fails_fast_with_guidance(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as error:
        load_model("facebook/detr-resnet-50-panoptic", CATEGORIES)
    assert time.perf_counter() - start < 5
    message = str(error.value)
    assert QUICKSTART_CONFIG in message
    assert "model_name_or_path" in message and "local" in message
    assert isinstance(error.value, RuntimeError)


def test_local_folder_without_checkpoint_is_not_a_hub_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError) as error:
        load_model(str(tmp_path / "empty"), CATEGORIES)
    assert not isinstance(error.value, ModelUnavailableError)
