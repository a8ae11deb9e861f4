"""Build the `DetrForSegmentation` to fine-tune: from a panoptic checkpoint (warm start) or from a config.

The dataset defines the label space (labels 0..K-1 in the order of `load_categories(...)`). Starting from a
checkpoint such as `facebook/detr-resnet-50-panoptic` (250 COCO-panoptic classes), every tensor is loaded except
the class head `detr.class_labels_classifier` (`Linear(d_model, K + 1)`, last row = "no object"), which changes
size. Its rows are warm-started: a dataset class whose name (or `class_map[name]`) is a pretrained class copies
that pretrained row (weight and bias), the no-object row is copied too, and the other rows keep their fresh
initialisation.

A random init (`model_name_or_path` None) is made trainable from scratch by
`finetune.modeling.random_init.prepare_random_init`.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import DetrConfig, DetrForSegmentation

from dataset_scripts.coco_panoptic import CheckpointLabels
from finetune.config import check_config_overrides
from finetune.modeling.random_init import prepare_random_init

logger = logging.getLogger(__name__)

CLASS_HEAD_KEYS = ("detr.class_labels_classifier.weight", "detr.class_labels_classifier.bias")
QUICKSTART_CONFIG = "finetune/configs/quickstart.yaml"
# DETR trains with the auxiliary decoding losses (one box/class loss per decoder layer); DetrConfig defaults
# them off, so `load_model` turns them on unless `config_overrides` says otherwise.
DEFAULT_OVERRIDES: dict[str, Any] = {"auxiliary_loss": True}
# The smallest DETR this project trains: the tests' model and `bench/train_speed.py`'s `tiny` config
# (timm resnet18, random init; the mask head needs d_model + heads divisible by 8, hence 64 + 8).
TINY_DETR_ARCHITECTURE: dict[str, Any] = {
    "backbone": "resnet18",
    "use_timm_backbone": True,
    "use_pretrained_backbone": False,
    "d_model": 64,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "num_queries": 10,
}
_LABEL_SPACE_KEYS = ("id2label", "label2id", "num_labels")


class ModelUnavailableError(RuntimeError):
    """The checkpoint named by `model_name_or_path` cannot be loaded (no local folder, Hub unreachable)."""


class ModelSetupError(ValueError):
    """The model settings do not fit the dataset or the checkpoint (`class_map`, `config_overrides`, categories)."""


def label_space(categories: Sequence[Mapping[str, Any]]) -> tuple[dict[int, str], dict[str, int], list[int]]:
    """The model's label space from the dataset categories.

    Args:
        categories: `load_categories(...)` output, dicts with at least `name` and `isthing`.

    Returns:
        `(id2label, label2id, stuff_label_ids)`: labels are 0..K-1 in the order of `categories`; stuff labels
        are those whose category has `isthing` False (what inference fuses with `label_ids_to_fuse`).
    """
    if not categories:
        raise ModelSetupError("the dataset has no categories: cannot build a class head with 0 classes")
    names = [str(c["name"]) for c in categories]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelSetupError(f"category names must be unique to label the model, duplicated: {duplicates}")
    id2label = dict(enumerate(names))
    label2id = {name: i for i, name in id2label.items()}
    stuff_label_ids = [i for i, c in enumerate(categories) if not c["isthing"]]
    return id2label, label2id, stuff_label_ids


def map_class_head_rows(
    new_id2label: Mapping[int, str],
    pretrained_id2label: Mapping[int, str],
    class_map: Mapping[str, str | int] | None = None,
) -> dict[int, int]:
    """Which pretrained class-head row warm-starts each new label.

    The checkpoint's rows are resolved through the COCO-panoptic category table
    (`dataset_scripts.coco_panoptic.CheckpointLabels`): on `facebook/detr-resnet-50-panoptic`, whose config
    calls the merged stuff classes `LABEL_184` ... `LABEL_200`, `wall-other-merged` (or its id, 199) still
    finds row 199, and rows the panoptic model never predicts (COCO-Stuff-only classes) match nothing.

    Args:
        new_id2label: the dataset's labels {label: name}.
        pretrained_id2label: the checkpoint's labels {label: name}.
        class_map: `{new_name: pretrained class}` for classes named differently, the pretrained class given by
            name or COCO-panoptic id (e.g. `{"wall": "wall-other-merged"}` or `{"wall": 199}`); other classes
            map by identical name.

    Returns:
        `{new_label: pretrained_label}` for the mapped labels only (the no-object row is not included).

    Raises:
        ModelSetupError: a `class_map` key is not a dataset class or a value is not a pretrained class.
    """
    class_map = dict(class_map or {})
    new_names = set(new_id2label.values())
    pretrained = CheckpointLabels.from_id2label(pretrained_id2label)

    unknown_keys = sorted(k for k in class_map if k not in new_names)
    if unknown_keys:
        raise ModelSetupError(f"class_map names classes that are not in the dataset: {unknown_keys}")
    unknown_values = sorted((v for v in class_map.values() if pretrained.row_of(v) is None), key=str)
    if unknown_values:
        hints = {v: pretrained.close_matches(v) for v in unknown_values}
        raise ModelSetupError(
            f"class_map names classes that the checkpoint does not have (close matches: {hints})"
        )

    rows = {}
    for label, name in new_id2label.items():
        row = pretrained.row_of(class_map.get(name, name))
        if row is not None:
            rows[int(label)] = row
    return rows


def load_model(
    model_name_or_path: str | None,
    categories: Sequence[Mapping[str, Any]],
    class_map: Mapping[str, str] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    calibration_images: torch.Tensor | None = None,
) -> DetrForSegmentation:
    """The `DetrForSegmentation` to fine-tune, labelled with the dataset's categories.

    Args:
        model_name_or_path: Hub id or local folder of a `DetrForSegmentation` checkpoint (warm start, see the
            module docstring), or None for a random init from `DetrConfig(**config_overrides)`.
        categories: the dataset categories (`load_categories(...)`), in label order.
        class_map: `{dataset_name: pretrained_name}` for warm-starting class-head rows of differently named classes.
        config_overrides: DetrConfig attributes. With a checkpoint, set on top of its config (loss weights,
            dropout, `auxiliary_loss`, ...; an override that changes tensor shapes makes loading fail).
            `auxiliary_loss` defaults to True (DETR's recipe). The label space always comes from `categories`.
        calibration_images: (B, 3, H, W) normalised training images (a few dozen are enough). Random init
            only: the frozen BatchNorm statistics of the backbone are set from them
            (`calibrate_frozen_batchnorm`). Ignored with a checkpoint, whose statistics are trained.

    Returns:
        The model; `model.config` holds `id2label`/`label2id` and `stuff_label_ids` (saved by `save_pretrained`).

    Raises:
        ModelUnavailableError: `model_name_or_path` is neither a local folder nor loadable from the Hub (offline).
        ModelSetupError: bad categories, `class_map`, or `config_overrides` (also `ConfigError`: an unknown
            DetrConfig field).
    """
    id2label, label2id, stuff_label_ids = label_space(categories)
    overrides = {**DEFAULT_OVERRIDES, **dict(config_overrides or {})}
    clashing = sorted(k for k in overrides if k in _LABEL_SPACE_KEYS)
    if clashing:
        raise ModelSetupError(
            f"config_overrides must not set {clashing}: the label space comes from the dataset categories"
        )
    check_config_overrides(overrides)

    if model_name_or_path is None:
        config = DetrConfig(**overrides, id2label=id2label, label2id=label2id)
        _keep_backbone_offline(config)
        model = DetrForSegmentation(config)
        prepare_random_init(model, calibration_images)
        logger.info("Random init from a config: %d labels, d_model %d", len(id2label), config.d_model)
    else:
        pretrained = _load_pretrained(str(model_name_or_path))
        config = copy.deepcopy(pretrained.config)
        config.id2label, config.label2id = id2label, label2id
        for key, value in overrides.items():
            setattr(config, key, value)
        _keep_backbone_offline(config)
        model = DetrForSegmentation(config)  # fresh init: what the unmapped class-head rows keep
        rows = transfer_pretrained_weights(pretrained, model, class_map)
        log_class_mapping(id2label, pretrained.config.id2label, rows)
        del pretrained
    model.config.stuff_label_ids = stuff_label_ids
    return model


def transfer_pretrained_weights(
    pretrained: DetrForSegmentation,
    model: DetrForSegmentation,
    class_map: Mapping[str, str] | None = None,
) -> dict[int, int]:
    """Copy every tensor of `pretrained` into `model`, warm-starting the resized class head.

    Args:
        pretrained: the loaded checkpoint, with its own label space.
        model: same architecture, the dataset's label space (freshly initialised).
        class_map: see `map_class_head_rows`.

    Returns:
        `{new_label: pretrained_label}`: the class-head rows copied (plus the no-object row, always copied).

    Raises:
        ModelSetupError: the two models differ in more than the class head (`config_overrides` changed the
            architecture), or `class_map` is wrong.
    """
    source = pretrained.state_dict()
    target = model.state_dict()
    body = {k: v for k, v in source.items() if k not in CLASS_HEAD_KEYS}
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in body.items()
        if k in target and target[k].shape != v.shape
    ]
    # A layer count or other architecture setting in `config_overrides` that differs from the checkpoint's
    # shows as tensors of a different shape, or tensors only one side has: a user error, not an invariant.
    only_model = sorted(set(target) - set(body) - set(CLASS_HEAD_KEYS))
    only_checkpoint = sorted(set(body) - set(target))
    if mismatched or only_model or only_checkpoint:
        differences = [
            *mismatched,
            *(f"{k}: not in the checkpoint" for k in only_model),
            *(f"{k}: not in the model" for k in only_checkpoint),
        ]
        raise ModelSetupError(
            f"config_overrides changed the architecture of the checkpoint ({len(differences)} tensors "
            f"differ, e.g. {differences[:3]}): remove the architecture keys from config_overrides"
        )
    result = model.load_state_dict(body, strict=False)
    # Only the class head is left (the key sets were compared above).
    assert sorted(result.missing_keys) == sorted(CLASS_HEAD_KEYS), result.missing_keys
    assert not result.unexpected_keys, result.unexpected_keys

    rows = map_class_head_rows(model.config.id2label, pretrained.config.id2label, class_map)
    old_head = pretrained.detr.class_labels_classifier
    new_head = model.detr.class_labels_classifier
    with torch.no_grad():
        for new_label, old_label in rows.items():
            new_head.weight[new_label] = old_head.weight[old_label]
            new_head.bias[new_label] = old_head.bias[old_label]
        new_head.weight[-1] = old_head.weight[-1]  # no-object row
        new_head.bias[-1] = old_head.bias[-1]
    return rows


def log_class_mapping(
    new_id2label: Mapping[int, str], pretrained_id2label: Mapping[int, str], rows: Mapping[int, int]
) -> None:
    """Log which class-head rows were warm-started (one line per dataset class), under COCO-panoptic names."""
    pretrained_names = CheckpointLabels.from_id2label(pretrained_id2label).names
    width = max(len(n) for n in new_id2label.values())
    lines = [f"{'label':>5}  {'class':<{width}}  warm start from pretrained class"]
    for label, name in sorted(new_id2label.items()):
        source = f"{pretrained_names[rows[label]]} (row {rows[label]})" if label in rows else "- (fresh init)"
        lines.append(f"{label:>5}  {name:<{width}}  {source}")
    lines.append(f"{'':>5}  {'no-object':<{width}}  no-object (row {len(pretrained_id2label)})")
    logger.info(
        "Class head: %d/%d classes warm-started from the checkpoint\n%s",
        len(rows),
        len(new_id2label),
        "\n".join(lines),
    )


def load_checkpoint(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    with_processor: bool = False,
) -> tuple[DetrForSegmentation, Any, list[str]]:
    """Load a `DetrForSegmentation` checkpoint (and its image processor): THE loader of the project.

    Training (`load_model`), inference (`finetune.inference.PanopticPredictor.from_pretrained`) and
    stuff pseudo-labelling (`dataset_scripts.stuff.labeller`) all load through it, so a checkpoint folder,
    a cached Hub id and an unreachable Hub id behave the same everywhere. A Hub id is first looked up in
    the local Hugging Face cache; only when absent is the Hub asked, with one short request, so that an
    offline machine fails within seconds instead of retrying downloads for minutes. Offline detection is
    `huggingface_hub.constants.HF_HUB_OFFLINE` (huggingface_hub's own parsing of ``HF_HUB_OFFLINE``).
    ImageNet backbone weights are never fetched (`_keep_backbone_offline`).

    Args:
        name_or_path: A checkpoint folder (config.json, weights[, preprocessor_config.json]) or a Hub id.
        revision: Hub revision (branch, tag, commit); ignored for a folder.
        with_processor: Also load the image processor (``preprocessor_config.json``).

    Returns:
        ``(model in eval mode on CPU, image processor or None, missing_keys)``: ``missing_keys`` are the
        model tensors the checkpoint lacked (left at their random init).

    Raises:
        FileNotFoundError: (an ``OSError``) a local path that is not a checkpoint folder, or a folder
            without ``config.json`` / ``preprocessor_config.json`` (the message names it).
        OSError: a checkpoint folder whose files transformers cannot read (its message names the file).
        ModelUnavailableError: a Hub id that is neither in the local cache nor reachable (offline flag,
            network down, no such repository).
    """
    import huggingface_hub
    from huggingface_hub import constants as hub_constants
    from transformers import AutoImageProcessor

    name = str(name_or_path)
    local = Path(name).expanduser()
    kwargs: dict[str, Any] = {}
    if local.exists():
        if not local.is_dir():
            raise FileNotFoundError(f"{local} is a file, not a checkpoint folder")
        needed = ["config.json"] + (["preprocessor_config.json"] if with_processor else [])
        for file in needed:
            if not (local / file).is_file():
                raise FileNotFoundError(f"{local} is not a checkpoint folder: {file} is missing")
        source = str(local)
    else:
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise FileNotFoundError(f"{name}: no such checkpoint folder")
        source, kwargs = name, {"revision": revision}
        try:  # already in the local Hugging Face cache?
            huggingface_hub.snapshot_download(name, revision=revision, local_files_only=True)
            kwargs["local_files_only"] = True
        except Exception:  # any failure means "not cached": ask the Hub below
            if hub_constants.HF_HUB_OFFLINE:
                raise ModelUnavailableError(
                    f"cannot load {name!r}: no such local folder, not in the local Hugging Face cache, "
                    "and HF_HUB_OFFLINE is set"
                ) from None
            try:
                huggingface_hub.model_info(name, revision=revision, timeout=10)
            except Exception as err:  # network errors come from several libraries
                raise ModelUnavailableError(
                    f"cannot load {name!r}: no such local folder, not in the local Hugging Face cache, and "
                    f"the Hugging Face Hub cannot provide it ({str(err) or type(err).__name__})"
                ) from err
    try:
        config = DetrConfig.from_pretrained(source, **kwargs)
        _keep_backbone_offline(config)
        model, info = DetrForSegmentation.from_pretrained(
            source,
            config=config,
            output_loading_info=True,
            dtype=torch.float32,  # float32 even from half-precision weights (mixed precision is Accelerate's)
            **kwargs,
        )
        processor = AutoImageProcessor.from_pretrained(source, **kwargs) if with_processor else None
    except OSError as err:
        if local.exists():
            raise  # a broken local folder: transformers' message names the file
        raise ModelUnavailableError(f"cannot load {name!r} from the Hugging Face Hub: {err}") from err
    return model.eval(), processor, list(info.get("missing_keys", []))


def _load_pretrained(model_name_or_path: str) -> DetrForSegmentation:
    """Load a checkpoint in its own label space (`load_checkpoint`), with training's guidance on failure."""
    try:
        model, _, missing_keys = load_checkpoint(model_name_or_path)
    except ModelUnavailableError as error:
        raise ModelUnavailableError(
            f"Cannot load the model {model_name_or_path!r}: it is not a local folder, and it could not be "
            "fetched from the Hugging Face Hub nor found in the local cache.\n"
            f"  * To train offline, use the quickstart config (fine-tunes the tiny checkpoint shipped in "
            f"pretrained/tiny-detr-panoptic): accelerate launch -q finetune/train.py --config {QUICKSTART_CONFIG}\n"
            "  * Or point `model_name_or_path` at a local DetrForSegmentation checkpoint folder (config.json + "
            "weights, e.g. fetched on a connected machine with "
            f"`hf download {model_name_or_path} --local-dir checkpoints/detr-panoptic`): "
            "--model checkpoints/detr-panoptic, or `model_name_or_path:` in the YAML config.\n"
            f"  (underlying error: {error})"
        ) from error
    missing = [k for k in missing_keys if k not in CLASS_HEAD_KEYS]
    if missing:
        logger.warning(
            "%s is not a complete DetrForSegmentation checkpoint: %d tensors start from a random init "
            "(e.g. %s); a detection-only checkpoint leaves the mask head untrained.",
            model_name_or_path,
            len(missing),
            missing[:3],
        )
    return model


def _keep_backbone_offline(config: DetrConfig) -> None:
    """Never fetch ImageNet backbone weights: the checkpoint (or the random init) provides all of them."""
    backbone_config = getattr(config, "backbone_config", None)
    if getattr(backbone_config, "use_pretrained_backbone", False):
        backbone_config.use_pretrained_backbone = False
    if getattr(config, "use_pretrained_backbone", False):
        config.use_pretrained_backbone = False
