"""Model initialisation: warm start from a (tiny, saved-in-the-test) panoptic checkpoint, random init, offline."""

from __future__ import annotations

import logging

import huggingface_hub
import pytest
import torch
from transformers import DetrForSegmentation

from finetune.config import ConfigError
from finetune.modeling.loading import (
    CLASS_HEAD_KEYS,
    QUICKSTART_CONFIG,
    TINY_DETR_ARCHITECTURE,
    ModelSetupError,
    ModelUnavailableError,
    label_space,
    load_model,
    map_class_head_rows,
)
from finetune.modeling.random_init import calibrate_frozen_batchnorm

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
    with caplog.at_level(logging.INFO, logger="finetune.modeling.loading"):
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
    with pytest.raises(ModelSetupError, match="architecture"):
        load_model(str(pretrained_dir), CATEGORIES, config_overrides={"num_queries": 7})
    # A layer count: tensors only one side has (was an assert, i.e. a traceback, for a user error).
    with pytest.raises(ModelSetupError, match=r"architecture .*not in the checkpoint"):
        load_model(str(pretrained_dir), CATEGORIES, config_overrides={"decoder_layers": 2})
    with pytest.raises(ModelSetupError, match=r"architecture .*not in the model"):
        load_model(str(pretrained_dir), CATEGORIES, config_overrides={"encoder_layers": 0})
    with pytest.raises(ConfigError, match="close matches: dice_loss_coefficient"):
        load_model(str(pretrained_dir), CATEGORIES, config_overrides={"dice_loss_coeficient": 3})


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


# The project's tiny architecture, with smaller feed-forward layers and fewer queries (faster, same code paths).
TINY_OVERRIDES = {**TINY_DETR_ARCHITECTURE, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "num_queries": 6}


def _frozen_batchnorms(model):
    return [m for m in model.detr.model.backbone.modules() if type(m).__name__ == "DetrFrozenBatchNorm2d"]


def test_random_init_backbone_residual_branches_get_gradients():
    """timm zero-inits the last BN of each residual block; frozen, it would kill the branch (zero grads)."""
    torch.manual_seed(0)
    model = load_model(None, CATEGORIES, config_overrides=TINY_OVERRIDES)
    assert all(bn.weight.any() for bn in _frozen_batchnorms(model))
    labels = [
        {
            "class_labels": torch.tensor([1, 2]),
            "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.5, 0.8, 1.0, 0.4]]),
        }
    ]
    output = model.detr(pixel_values=torch.randn(1, 3, 64, 64), labels=labels)
    output.loss.backward()
    convs = {n: p for n, p in model.detr.model.backbone.named_parameters() if ".layer" in n and p.dim() == 4}
    assert len(convs) >= 15
    dead = [n for n, p in convs.items() if p.grad is None or not p.grad.any()]
    assert not dead, dead


def test_random_init_object_queries_are_distinct():
    """transformers' N(0, 0.02) init makes every query alike (measured spread ~1e-5); reference init ~0.05."""
    torch.manual_seed(0)
    model = load_model(None, CATEGORIES, config_overrides=TINY_OVERRIDES).eval()
    assert model.detr.model.query_position_embeddings.weight.std() > 0.5
    with torch.no_grad():
        logits = model.detr(pixel_values=torch.randn(1, 3, 64, 64)).logits[0]  # (queries, K + 1)
    spread = (logits - logits.mean(dim=0)).abs().mean()
    assert spread > 1e-2, f"every query predicts the same logits (mean deviation {spread:.4f})"


def test_random_init_mask_head_hears_the_attention_maps(pretrained_dir):
    """The attention maps (entries ~1 / (heads * H * W)) must not be drowned by the encoder features."""
    torch.manual_seed(0)
    model = load_model(None, CATEGORIES, config_overrides=TINY_OVERRIDES)
    weight = model.mask_head.conv1.conv.weight  # (out, d_model + heads, 3, 3)
    heads = model.config.encoder_attention_heads
    ratio = weight[:, -heads:].abs().mean() / weight[:, :-heads].abs().mean()
    assert ratio > 20
    # a trained mask head from a checkpoint is left as it is
    warm = load_model(str(pretrained_dir), CATEGORIES)
    trained = DetrForSegmentation.from_pretrained(pretrained_dir).mask_head.conv1.conv.weight
    assert torch.equal(warm.mask_head.conv1.conv.weight, trained)


def test_calibration_normalises_the_frozen_batchnorms():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 64, 64) * 3 - 1
    model = load_model(None, CATEGORIES, config_overrides=TINY_OVERRIDES, calibration_images=images)
    outputs = []
    handles = [
        bn.register_forward_hook(lambda _m, _i, out: outputs.append(out.clone()))  # before in-place ReLUs
        for bn in _frozen_batchnorms(model)
    ]
    with torch.no_grad():
        model.detr.model.backbone(images, torch.ones(4, 64, 64, dtype=torch.long))
    for handle in handles:
        handle.remove()
    assert len(outputs) == len(_frozen_batchnorms(model)) == 20
    for out in outputs:
        # scale 1, bias 0 at init: normalised output = zero mean, unit variance per (non-constant) channel
        mean, var = out.mean(dim=(0, 2, 3)), out.var(dim=(0, 2, 3))
        live = var > 1e-3
        assert mean.abs().max() < 1e-3
        assert torch.allclose(var[live], torch.ones_like(var[live]), atol=1e-2)
    # and the statistics themselves are those of each layer's input (first layer: the stem convolution)
    stem = _frozen_batchnorms(model)[0]
    conv_out = model.detr.model.backbone.model.conv1(images)
    assert torch.allclose(stem.running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(stem.running_var, conv_out.var(dim=(0, 2, 3)), rtol=1e-4)


def test_calibration_is_not_applied_to_a_checkpoint(pretrained_dir):
    images = torch.rand(2, 3, 64, 64)
    before = DetrForSegmentation.from_pretrained(pretrained_dir).state_dict()
    model = load_model(str(pretrained_dir), CATEGORIES, calibration_images=images)
    after = model.state_dict()
    for key in before:
        if "backbone" in key:
            assert torch.equal(before[key], after[key]), key
    assert calibrate_frozen_batchnorm(model, images) == 20  # but it can be called explicitly


def test_offline_hub_id_fails_fast_with_guidance(monkeypatch, network_attempts):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError) as error:
        load_model("facebook/detr-resnet-50-panoptic", CATEGORIES)
    assert network_attempts == []  # fails from the offline flag, not after (retried) connection attempts
    message = str(error.value)
    assert QUICKSTART_CONFIG in message
    assert "model_name_or_path" in message and "local" in message
    assert isinstance(error.value, RuntimeError)


def test_local_folder_without_checkpoint_is_not_a_hub_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError) as error:
        load_model(str(tmp_path / "empty"), CATEGORIES)
    assert not isinstance(error.value, ModelUnavailableError)
