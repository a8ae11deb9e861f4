"""The offline stand-in for `facebook/detr-resnet-50-panoptic` (tests/hub_standin.py) and the network guard.

The stand-in is built once per module (about 2 s, a 96 MB `pytorch_model.bin` under pytest's tmp dir).
"""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.hub_standin import (
    CONFIG_NAME,
    HUB_ID2LABEL,
    LEGACY_EXTRA_KEYS,
    PREPROCESSOR_NAME,
    STANDIN_ARCHITECTURE,
    WEIGHTS_NAME,
    NetworkAccessError,
    network_blocked,
    save_hub_standin,
    v4_key,
)


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    return save_hub_standin(tmp_path_factory.mktemp("hub") / "detr-resnet-50-panoptic")


@pytest.fixture(scope="module")
def saved_state_dict(standin) -> dict[str, torch.Tensor]:
    return torch.load(standin / WEIGHTS_NAME, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def loaded(standin):
    """`(model, loading_info)` of `DetrForSegmentation.from_pretrained(standin)`, with the network blocked."""
    from transformers import DetrForSegmentation

    with network_blocked():
        return DetrForSegmentation.from_pretrained(standin, output_loading_info=True)


# ----------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------


def test_folder_has_the_hub_repos_files(standin, saved_state_dict):
    assert sorted(p.name for p in standin.iterdir()) == [CONFIG_NAME, PREPROCESSOR_NAME, WEIGHTS_NAME]
    assert all(isinstance(t, torch.Tensor) for t in saved_state_dict.values())


def test_weights_use_the_transformers_4_key_names(saved_state_dict):
    keys = set(saved_state_dict)
    for key in (
        "detr.model.backbone.conv_encoder.model.conv1.weight",
        "detr.model.backbone.conv_encoder.model.layer4.2.bn3.running_var",
        "detr.model.input_projection.weight",
        "detr.model.query_position_embeddings.weight",
        "detr.model.encoder.layers.1.self_attn.out_proj.weight",
        "detr.model.encoder.layers.1.fc1.weight",
        "detr.model.encoder.layers.1.final_layer_norm.weight",
        "detr.model.decoder.layers.1.encoder_attn.out_proj.bias",
        "detr.model.decoder.layers.1.fc2.weight",
        "detr.model.decoder.layernorm.weight",
        "detr.class_labels_classifier.weight",
        "detr.bbox_predictor.layers.2.weight",
        "bbox_attention.q_linear.weight",
        "bbox_attention.k_linear.bias",
        "mask_head.lay1.weight",
        "mask_head.gn1.weight",
        "mask_head.adapter3.weight",
        "mask_head.lay5.weight",
        "mask_head.out_lay.weight",
        *LEGACY_EXTRA_KEYS,
    ):
        assert key in keys, key
    for v5_fragment in (".o_proj.", ".mlp.fc", "backbone.model.", "fpn_stages", "output_conv", "conv1.conv"):
        assert not [k for k in keys if v5_fragment in k], v5_fragment
    assert not [k for k in keys if k.startswith("bbox_attention.") and "_proj." in k]
    # 250 classes + "no object", at the stand-in's reduced width
    class_head = saved_state_dict["detr.class_labels_classifier.weight"]
    assert class_head.shape == (251, STANDIN_ARCHITECTURE["d_model"])


def test_rename_table_is_the_inverse_of_transformers_own_renames(loaded):
    """The explicit table agrees, key by key, with transformers 5's reversal of its load-time renames.

    The model is built from the config, not loaded: the reversal of a loaded model only undoes the renames
    that loading applied, so it would echo whatever names the file had.
    """
    from transformers import DetrForSegmentation
    from transformers.core_model_loading import revert_weight_conversion

    model = DetrForSegmentation(loaded[0].config)
    v5 = model.state_dict()
    reverted = revert_weight_conversion(model, dict(v5))
    assert sorted(v4_key(k) for k in v5) == sorted(reverted)
    assert all(reverted[v4_key(k)] is tensor for k, tensor in v5.items())
    assert v4_key("detr.model.decoder.layers.3.mlp.fc1.weight") == "detr.model.decoder.layers.3.fc1.weight"


# ----------------------------------------------------------------------------------------------
# Loading with transformers 5
# ----------------------------------------------------------------------------------------------


def test_loads_every_tensor_from_the_file(loaded, saved_state_dict):
    """No missing or unexpected key, and every parameter and buffer equals the saved tensor.

    The saved tensors are all random (LayerNorm weights and BatchNorm statistics included), so a tensor
    that loading re-initialised instead of reading would differ.
    """
    model, info = loaded
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set() and info["error_msgs"] == []

    as_saved = {v4_key(k): tensor for k, tensor in model.state_dict().items()}  # under 4.x names
    assert sorted(as_saved) == sorted(set(saved_state_dict) - set(LEGACY_EXTRA_KEYS))
    different = [k for k, tensor in as_saved.items() if not torch.equal(tensor, saved_state_dict[k])]
    assert different == []


def test_loaded_model_runs(loaded):
    model, _ = loaded
    with torch.no_grad():
        outputs = model(pixel_values=torch.rand(1, 3, 64, 96))
    assert outputs.logits.shape == (1, 100, 251)
    assert outputs.pred_masks.shape[:2] == (1, 100)
    assert torch.isfinite(outputs.logits).all()


def test_same_seed_same_weights(tmp_path, saved_state_dict):
    again = torch.load(save_hub_standin(tmp_path, seed=0) / WEIGHTS_NAME, weights_only=True)
    other = torch.load(save_hub_standin(tmp_path / "other", seed=1) / WEIGHTS_NAME, weights_only=True)
    key = "detr.class_labels_classifier.weight"
    assert torch.equal(again[key], saved_state_dict[key])
    assert not torch.equal(other[key], saved_state_dict[key])


# ----------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------


def test_config_json_is_a_transformers_4_detr_config(standin):
    config = json.loads((standin / CONFIG_NAME).read_text(encoding="utf-8"))
    assert config["architectures"] == ["DetrForSegmentation"]
    assert config["model_type"] == "detr"
    assert config["transformers_version"].startswith("4.")
    expected = {
        "use_timm_backbone": True,
        "use_pretrained_backbone": True,
        "backbone": "resnet50",
        "backbone_config": None,
        "num_channels": 3,
        "dilation": False,
        "position_embedding_type": "sine",
        "num_queries": 100,
        "num_hidden_layers": config["encoder_layers"],
        "bbox_loss_coefficient": 5,
        "giou_loss_coefficient": 2,
        "eos_coefficient": 0.1,
    }
    assert {k: config[k] for k in expected} == expected
    assert "dtype" not in config and "num_labels" not in config  # 5.x-only fields
    assert len(config["id2label"]) == 250 and all(isinstance(k, str) for k in config["id2label"])


def test_labels_as_in_the_real_checkpoint(loaded):
    id2label = loaded[0].config.id2label
    assert loaded[0].config.num_labels == 250
    expected = {
        0: "N/A", 1: "person", 12: "N/A", 63: "couch", 75: "remote", 90: "toothbrush", 91: "N/A",
        92: "banner", 93: "blanket", 111: "dirt", 115: "floor-other", 157: "sky-other", 171: "wall-brick",
        173: "wall-other", 182: "wood", 183: "LABEL_183", 184: "LABEL_184", 187: "LABEL_187",
        199: "LABEL_199", 200: "LABEL_200", 249: "LABEL_249",
    }  # fmt: skip
    assert {i: id2label[i] for i in expected} == expected
    unused_coco_ids = [0, 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91]
    assert [i for i, name in id2label.items() if name == "N/A"] == unused_coco_ids
    # the merged COCO-panoptic stuff classes (tree-merged, sky-other-merged, ...) have no name
    assert not [name for name in id2label.values() if name.endswith("-merged")]
    assert [i for i, name in id2label.items() if name.startswith("LABEL_")] == list(range(183, 250))


def test_label2id_inverts_id2label(loaded):
    config = loaded[0].config
    assert {name: i for i, name in config.id2label.items() if name != "N/A"} == {
        name: i for name, i in config.label2id.items() if name != "N/A"
    }
    assert config.label2id["N/A"] == 91  # 4.x built label2id as {v: k}: the last "N/A" id wins
    assert config.id2label == HUB_ID2LABEL


# ----------------------------------------------------------------------------------------------
# preprocessor_config.json
# ----------------------------------------------------------------------------------------------


def test_preprocessor_config_is_a_legacy_feature_extractor(standin):
    config = json.loads((standin / PREPROCESSOR_NAME).read_text(encoding="utf-8"))
    assert config["feature_extractor_type"] == "DetrFeatureExtractor"
    assert "image_processor_type" not in config
    assert (config["format"], config["size"], config["max_size"]) == ("coco_panoptic", 800, 1333)


def test_auto_image_processor_loads_it_and_resizes_like_detr(standin, no_network):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(standin)
    assert type(processor).__name__.startswith("DetrImageProcessor")
    assert processor.format == "coco_panoptic"

    def resized(height: int, width: int) -> tuple[int, int]:
        image = np.zeros((height, width, 3), dtype=np.uint8)
        return tuple(processor(images=image, return_tensors="pt")["pixel_values"].shape[-2:])

    assert resized(480, 640) == (800, 1066)  # shortest edge 800, width int(640 * 800 / 480)
    assert resized(480, 1600) == (400, 1333)  # longest edge capped at 1333


# ----------------------------------------------------------------------------------------------
# Network guard
# ----------------------------------------------------------------------------------------------


def test_guard_refuses_every_kind_of_connection():
    with pytest.raises(NetworkAccessError, match="swallowed"), network_blocked() as attempts:
        with pytest.raises(NetworkAccessError):
            socket.create_connection(("127.0.0.1", 9), timeout=1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, pytest.raises(NetworkAccessError):
            sock.connect(("127.0.0.1", 9))
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock, pytest.raises(NetworkAccessError):
            sock.connect_ex(("::1", 9))
        with pytest.raises(NetworkAccessError):
            socket.getaddrinfo("huggingface.co", 443)
        assert len(attempts) == 4
    # leaving the block put the real functions back
    assert socket.create_connection.__module__ == "socket"
    assert socket.socket.connect.__qualname__ != "network_blocked.<locals>.connect"


def test_guard_fails_an_attempt_the_code_swallowed():
    # contextlib.suppress(Exception): like a library that catches everything
    with (
        pytest.raises(NetworkAccessError, match="swallowed"),
        network_blocked(),
        contextlib.suppress(Exception),
    ):
        urllib.request.urlopen("http://127.0.0.1:9/", timeout=1)


def test_guard_leaves_local_unix_sockets_alone(tmp_path):
    address = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server, network_blocked():
        server.bind(address)
        server.listen(1)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(address)


def test_no_network_fixture_records_the_attempts(no_network):
    with pytest.raises(NetworkAccessError):
        socket.create_connection(("127.0.0.1", 9))
    assert no_network == ["socket.create_connection(('127.0.0.1', 9))"]
    no_network.clear()  # acknowledged: the fixture's teardown check then passes
