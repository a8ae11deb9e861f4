"""An offline stand-in for the Hub checkpoint `facebook/detr-resnet-50-panoptic`, built at test time.

Not a test module. `save_hub_standin(path)` writes a folder with the real repository's file layout, as
transformers 4.x wrote it in 2021-2022 and as transformers 5 must still read it:

- `pytorch_model.bin`: a `torch.save`d state dict (not safetensors) under the transformers-4.x key names of
  `DetrForSegmentation` (`detr.model.backbone.conv_encoder.model.*`, `*.self_attn.out_proj.*`,
  `layers.N.fc1.*`, `bbox_attention.q_linear.*`, `mask_head.lay1.*`, ...), every tensor random but seeded,
  so that a tensor re-initialised on load instead of read from the file cannot go unnoticed;
- `config.json`: a 4.x `DetrConfig` (timm `resnet50` backbone, `use_pretrained_backbone: true`,
  `backbone_config: null`, `num_hidden_layers`, `torch_dtype`, `transformers_version: 4.26.0.dev0`) with the
  250 labels of the real checkpoint (`HUB_ID2LABEL`);
- `preprocessor_config.json`: a legacy `DetrFeatureExtractor` config (`size: 800`, `max_size: 1333`,
  `format: coco_panoptic`, no `image_processor_type`).

What differs from the real checkpoint, on purpose, so that CI stays fast: the transformer widths and
depths (`d_model`, the feed-forward widths, 2 encoder and 2 decoder layers instead of 6), all set through
the config fields, and the weights, which are random. The backbone is the real one, timm resnet50: 23.6M
of the 24.0M parameters, so the file is 96 MB (about 1 s to write, 0.3 s to load on one CPU thread).
Shrinking it would mean another timm model name in config.json, i.e. no longer the real checkpoint's.

It also provides `network_blocked`/`no_network`: a guard that makes every network connection attempt of a
test fail, and fails the test even when the library under test catches the error.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"

NUM_LABELS = 250  # DETR's panoptic class head: 250 classes + "no object" (hubconf `num_classes=250`)

# ---------------------------------------------------------------------------------------------------------
# The label names of the real config.json.
#
# No stored copy of the Hub file itself was at hand; the table follows what public sources show. The 2021
# conversion (transformers' `convert_detr_original_pytorch_checkpoint_to_pytorch.py`) only set
# `config.num_labels = 250` for the panoptic models, so every id without a name is `LABEL_<id>`
# (transformers issue #12808 quotes `LABEL_0`.. for detr-resnet-101-panoptic then). Names were added later:
# transformers' pipeline slow tests on this checkpoint expect "blanket" (93), "cat", "remote", "couch".
# The names are:
#   - ids 1..90: the COCO thing categories, ids and names as in cocodataset/panopticapi
#     `panoptic_coco_categories.json` (= COCO detection); the ids COCO leaves unused (0, 12, 26, 29, 30, 45,
#     66, 68, 69, 71, 83) and 91 are "N/A", as in DETR's own class list (facebookresearch/detr notebooks);
#   - ids 92..182: the 91 COCO-Stuff stuff classes of nightrome/cocostuff `labels.txt`, all of them, also
#     those COCO panoptic does not use on their own (`wall-other`, `sky-other`, `dirt`, ...);
#   - ids 183..249: no name, `LABEL_<id>`. In particular the 17 merged COCO-panoptic stuff classes of
#     panopticapi (184 `tree-merged` .. 200 `rug-merged`, e.g. 187 `sky-other-merged`, 199
#     `wall-other-merged`) are only `LABEL_184` .. `LABEL_200` in the checkpoint's config.
# ---------------------------------------------------------------------------------------------------------
_NAMED_LABELS: tuple[str, ...] = (
    # 0-9
    "N/A", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    # 10-19
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    # 20-29
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A",
    # 30-39
    "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    # 40-49
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife",
    # 50-59
    "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    # 60-69
    "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A",
    # 70-79
    "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    # 80-89
    "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    # 90-99
    "toothbrush", "N/A", "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    # 100-109
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard",
    "curtain",
    # 110-119
    "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower",
    # 120-129
    "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    # 130-139
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    # 140-149
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road",
    # 150-159
    "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    # 160-169
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree",
    # 170-179
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops",
    # 180-182
    "window-blind", "window-other", "wood",
)  # fmt: skip
assert len(_NAMED_LABELS) == 183  # ids 0..182

HUB_ID2LABEL: dict[int, str] = {
    i: _NAMED_LABELS[i] if i < len(_NAMED_LABELS) else f"LABEL_{i}" for i in range(NUM_LABELS)
}
# As 4.x computed it (`{v: k for k, v in id2label.items()}`): for the twelve "N/A" ids the last one wins.
HUB_LABEL2ID: dict[str, int] = {name: i for i, name in HUB_ID2LABEL.items()}

# ---------------------------------------------------------------------------------------------------------
# Key names: transformers 5 -> transformers 4.x.
#
# transformers 5 renames the 4.x keys while loading (`WeightRenaming` entries in
# `transformers/conversion_mapping.py`); each row below undoes one of them. Rows apply in order to a
# transformers-5 `state_dict()` key; a `\d+` group keeps the layer index.
# ---------------------------------------------------------------------------------------------------------
V5_TO_V4_KEY_RENAMES: tuple[tuple[str, str], ...] = (
    # "DetrModel": WeightRenaming("backbone.conv_encoder", "backbone"). 4.x kept the timm model under
    # DetrConvEncoder.model inside DetrConvEncoderWithPositionEmbedding.conv_encoder.
    (r"^detr\.model\.backbone\.model\.", "detr.model.backbone.conv_encoder.model."),
    # "DetrModel": WeightRenaming("out_proj", "o_proj"): the attention output projections.
    (r"\.(self_attn|encoder_attn)\.o_proj\.", r".\1.out_proj."),
    # "DetrModel": WeightRenaming(r"layers.(\d+).fc1", r"layers.\1.mlp.fc1") (and fc2): 4.x had no DetrMLP.
    (r"\.layers\.(\d+)\.mlp\.(fc1|fc2)\.", r".layers.\1.\2."),
    # "DetrForSegmentation": bbox_attention.{q,k}_linear -> {q,k}_proj (the original DETR's MHAttentionMap).
    (r"^bbox_attention\.q_proj\.", "bbox_attention.q_linear."),
    (r"^bbox_attention\.k_proj\.", "bbox_attention.k_linear."),
    # "DetrForSegmentation": the mask head's flat original-DETR names (MaskHeadSmallConv) -> nested modules.
    (r"^mask_head\.conv1\.conv\.", "mask_head.lay1."),
    (r"^mask_head\.conv1\.norm\.", "mask_head.gn1."),
    (r"^mask_head\.conv2\.conv\.", "mask_head.lay2."),
    (r"^mask_head\.conv2\.norm\.", "mask_head.gn2."),
    (r"^mask_head\.fpn_stages\.0\.fpn_adapter\.", "mask_head.adapter1."),
    (r"^mask_head\.fpn_stages\.0\.refine\.conv\.", "mask_head.lay3."),
    (r"^mask_head\.fpn_stages\.0\.refine\.norm\.", "mask_head.gn3."),
    (r"^mask_head\.fpn_stages\.1\.fpn_adapter\.", "mask_head.adapter2."),
    (r"^mask_head\.fpn_stages\.1\.refine\.conv\.", "mask_head.lay4."),
    (r"^mask_head\.fpn_stages\.1\.refine\.norm\.", "mask_head.gn4."),
    (r"^mask_head\.fpn_stages\.2\.fpn_adapter\.", "mask_head.adapter3."),
    (r"^mask_head\.fpn_stages\.2\.refine\.conv\.", "mask_head.lay5."),
    (r"^mask_head\.fpn_stages\.2\.refine\.norm\.", "mask_head.gn5."),
    (r"^mask_head\.output_conv\.", "mask_head.out_lay."),
)

# The 2021 checkpoints also hold a `num_batches_tracked` counter for the first block's downsample
# BatchNorm of each ResNet stage (4.x's frozen-BatchNorm swap missed those modules), which transformers 5
# drops on load (`DetrPreTrainedModel._keys_to_ignore_on_load_unexpected`). Kept, so that the stand-in
# also exercises that path.
LEGACY_EXTRA_KEYS: tuple[str, ...] = tuple(
    f"detr.model.backbone.conv_encoder.model.layer{stage}.0.downsample.1.num_batches_tracked"
    for stage in (1, 2, 3, 4)
)

# The reduced architecture (the real values in comments); everything else is the real checkpoint's.
STANDIN_ARCHITECTURE: dict[str, int] = {
    "d_model": 64,  # 256; the mask head needs d_model + heads divisible by 8
    "encoder_layers": 2,  # 6; 2 so that layer indices above 0 are exercised
    "decoder_layers": 2,  # 6
    "encoder_ffn_dim": 128,  # 2048
    "decoder_ffn_dim": 128,  # 2048
}

# Values of transformers 4.x `DetrConfig` (its `__init__` defaults, which the real checkpoint keeps), in
# the fields 4.x wrote to config.json (`DetrConfig.to_dict()` = its `__dict__`; PretrainedConfig writes
# only the fields differing from its own defaults).
_V4_CONFIG_FIELDS: dict[str, Any] = {
    "activation_dropout": 0.0,
    "activation_function": "relu",
    "attention_dropout": 0.0,
    "auxiliary_loss": False,
    "backbone": "resnet50",
    "backbone_config": None,
    "bbox_cost": 5,
    "bbox_loss_coefficient": 5,
    "class_cost": 1,
    "decoder_attention_heads": 8,
    "decoder_layerdrop": 0.0,
    "dice_loss_coefficient": 1,
    "dilation": False,
    "dropout": 0.1,
    "encoder_attention_heads": 8,
    "encoder_layerdrop": 0.0,
    "eos_coefficient": 0.1,
    "giou_cost": 2,
    "giou_loss_coefficient": 2,
    "init_std": 0.02,
    "init_xavier_std": 1.0,
    "is_encoder_decoder": True,
    "mask_loss_coefficient": 1,
    "model_type": "detr",
    "num_channels": 3,
    "num_queries": 100,
    "position_embedding_type": "sine",
    "torch_dtype": "float32",
    "transformers_version": "4.26.0.dev0",
    "use_pretrained_backbone": True,
    "use_timm_backbone": True,
}

# The preprocessor_config.json of the 4.x conversion: `DetrFeatureExtractor(format="coco_panoptic")`.
_V4_PREPROCESSOR: dict[str, Any] = {
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "DetrFeatureExtractor",
    "format": "coco_panoptic",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "max_size": 1333,
    "size": 800,
}


def v4_key(v5_key: str) -> str:
    """The transformers-4.x name of a transformers-5 `DetrForSegmentation` state-dict key.

    Args:
        v5_key: A key of a transformers-5 `DetrForSegmentation.state_dict()`.

    Returns:
        The key as the 4.x checkpoint on the Hub names it (unchanged when 4.x and 5 agree).
    """
    for pattern, replacement in V5_TO_V4_KEY_RENAMES:
        v5_key = re.sub(pattern, replacement, v5_key)
    return v5_key


def legacy_config(architecture: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The 4.x `config.json` of the stand-in, as a dict.

    Args:
        architecture: The widths and depths to write (defaults to `STANDIN_ARCHITECTURE`).

    Returns:
        The config, with the 250 labels of the real checkpoint.
    """
    architecture = dict(STANDIN_ARCHITECTURE if architecture is None else architecture)
    config = {
        **_V4_CONFIG_FIELDS,
        **architecture,
        # 4.x stored `self.num_hidden_layers = encoder_layers`; transformers 5 maps it back onto
        # encoder_layers (DetrConfig.attribute_map), so it must agree.
        "num_hidden_layers": architecture["encoder_layers"],
        "architectures": ["DetrForSegmentation"],
        "id2label": {str(i): name for i, name in HUB_ID2LABEL.items()},
        "label2id": dict(HUB_LABEL2ID),
    }
    return dict(sorted(config.items()))  # 4.x wrote config.json with sort_keys=True


def _v5_model(folder: Path, seed: int):
    """A transformers-5 `DetrForSegmentation` built from the stand-in's config.json, every tensor random.

    The config is read by `DetrConfig.from_pretrained`, as loading the folder will read it, so that the
    shapes are those `from_pretrained` expects. Random values everywhere (LayerNorm weights, biases and
    BatchNorm statistics too, not only what the initialisers randomise) make a tensor that loading
    re-initialises instead of reading differ from the file.
    """
    import torch
    from transformers import DetrConfig, DetrForSegmentation

    torch.manual_seed(seed)
    model = DetrForSegmentation(DetrConfig.from_pretrained(folder)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            values = torch.randn(tensor.shape, generator=generator) * 0.05
            if name.endswith("running_var"):
                values = values.abs() + 0.5  # a variance: positive
            tensor.copy_(values)
    return model


def save_hub_standin(path: Path, *, architecture: Mapping[str, int] | None = None, seed: int = 0) -> Path:
    """Write the stand-in for `facebook/detr-resnet-50-panoptic` to `path`.

    Args:
        path: The folder to write (created if missing); existing files of the same names are replaced.
        architecture: The reduced widths and depths (defaults to `STANDIN_ARCHITECTURE`).
        seed: Seed of the random weights: the same seed writes the same tensors.

    Returns:
        `path`, ready for `DetrForSegmentation.from_pretrained(path)` and
        `AutoImageProcessor.from_pretrained(path)`.
    """
    import torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = legacy_config(architecture)
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (path / PREPROCESSOR_NAME).write_text(json.dumps(_V4_PREPROCESSOR, indent=2) + "\n", encoding="utf-8")
    model = _v5_model(path, seed)

    state_dict = {v4_key(name): tensor.detach().clone() for name, tensor in model.state_dict().items()}
    for key in LEGACY_EXTRA_KEYS:
        state_dict[key] = torch.tensor(0, dtype=torch.long)
    torch.save(state_dict, path / WEIGHTS_NAME)
    return path


# ---------------------------------------------------------------------------------------------------------
# Network guard
# ---------------------------------------------------------------------------------------------------------


class NetworkAccessError(RuntimeError):
    """A test tried to open a network connection.

    Not an `OSError`, so that the usual "offline? use the cache" handlers of HTTP clients do not take it
    for a network failure and carry on.
    """


_INTERNET_FAMILIES = (socket.AF_INET, socket.AF_INET6)


@contextlib.contextmanager
def network_blocked() -> Iterator[list[str]]:
    """Within the block, every attempt to reach the network raises `NetworkAccessError`.

    Covers `socket.socket.connect`/`connect_ex` (internet sockets; local Unix sockets stay usable),
    `socket.create_connection` and `socket.getaddrinfo` (DNS). The attempts are recorded, and leaving the
    block raises `NetworkAccessError` if there was any, so that an attempt the code under test caught and
    swallowed still fails the test.

    Yields:
        The attempts so far, one description each.

    Raises:
        NetworkAccessError: At an attempt, and on leaving the block when an attempt was made.
    """
    attempts: list[str] = []
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def refuse(what: str) -> None:
        attempts.append(what)
        raise NetworkAccessError(f"network access in a test: {what}")

    def connect(sock: socket.socket, address: Any) -> None:
        if sock.family not in _INTERNET_FAMILIES:
            return original_connect(sock, address)
        refuse(f"socket.connect({address!r})")

    def connect_ex(sock: socket.socket, address: Any) -> int:
        if sock.family not in _INTERNET_FAMILIES:
            return original_connect_ex(sock, address)
        refuse(f"socket.connect_ex({address!r})")
        return 1  # not reached: refuse raises

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        refuse(f"socket.create_connection({address!r})")
        raise AssertionError("not reached")

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list:
        refuse(f"socket.getaddrinfo({host!r}, {port!r})")
        raise AssertionError("not reached")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "connect_ex", connect_ex)
        patch.setattr(socket, "create_connection", create_connection)
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield attempts  # an exception of the block propagates from here, past the check below
        if attempts:
            raise NetworkAccessError(f"network access attempted (and the error swallowed): {attempts}")


@pytest.fixture
def no_network() -> Iterator[list[str]]:
    """No network for the test: any connection attempt raises and fails the test (see `network_blocked`)."""
    with network_blocked() as attempts:
        yield attempts


NETWORK_LOG_ENV = "DETR_PANOPTIC_TEST_NETWORK_LOG"
_SITECUSTOMIZE = '''"""Written by tests/hub_standin.py: this process and its children may not reach the network."""
import atexit
import os

from tests.hub_standin import network_blocked

_block = network_blocked()
_attempts = _block.__enter__()


@atexit.register
def _record_attempts():
    if _attempts:
        with open(os.environ["{log_env}"], "a", encoding="utf-8") as log:
            log.write("\\n".join(f"pid {{os.getpid()}}: {{attempt}}" for attempt in _attempts) + "\\n")
'''


def network_blocked_env(folder: Path, env: Mapping[str, str]) -> tuple[dict[str, str], Path]:
    """`env` for a subprocess in which `network_blocked` is active, in it and in every Python child process.

    A `sitecustomize.py` on `PYTHONPATH` (imported by every interpreter at start-up) enters the guard and,
    at exit, appends the attempts it refused to a log, so that a swallowed attempt of any process of a
    launch (accelerate's launcher, the training script, data workers) is still seen.

    Args:
        folder: where to write `sitecustomize.py` and the log.
        env: the environment to extend.

    Returns:
        `(env, log)`: the log file exists after the run if and only if a process tried to reach the network.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(log_env=NETWORK_LOG_ENV), encoding="utf-8")
    log = folder / "network_attempts.log"
    repo_root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join(p for p in (str(folder), str(repo_root), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, NETWORK_LOG_ENV: str(log)}, log
