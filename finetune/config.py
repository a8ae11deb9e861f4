"""The typed configuration of a training run: a dataclass tree, YAML/JSON files, CLI overrides.

A run is described by one `TrainingConfig` with one section per concern::

    model:      which weights to start from (Hub id, local folder, or a config for a random init)
    data:       which dataset, augmentation, image sizes, loader workers
    detection:  stage 1 (box model): epochs, batch size, optimiser, LR schedule
    masks:      stage 2 (mask head, detection frozen): the same fields
    eval:       how often and how to evaluate (post-processing thresholds)
    run:        output folder, seed, stages to run, resuming, mixed precision, accumulation, checkpoints
    trainer:    EMA of the weights, early stopping, fused AdamW, thread count, denormal flushing
    logging:    trackers (`report_to`), logging interval
    hub:        pushing the final model

The YAML file mirrors this tree (`finetune/configs/default.yaml`). Every field can be overridden on
the command line with a flat `--name value`: section fields keep their name (`--output_dir`,
`--model_name_or_path`, `--seed`), stage fields are prefixed by the stage (`--detection_epochs 50`,
`--masks_lr 1e-4`). Lists take comma-separated values (`--stages detection,masks`), dicts take JSON
(`--config_overrides '{"d_model": 64}'`). Precedence: CLI > file > dataclass defaults. Every option also
takes dashes (`--output-dir`, `--detection-epochs`), and the names the other scripts use are aliases:
`--model` (`--model_name_or_path`), `--dataset` (`--dataset_dir`). The help text of an option is the
docstring under its field (or `metadata["help"]`); `--help` shows it with the real default.

Parsing (`finetune/config_cli.py`) uses `transformers.HfArgumentParser` over flat dataclasses generated
from the sections (it only understands flat dataclasses); the result is assembled back into the tree and
validated once. `config_cli.py` is given the tree class and imports nothing from this module; both share
`finetune/config_types.py` (`ConfigError`, the annotation helpers).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetune.config_cli import parse_command_line
from finetune.config_types import ConfigError, base_type, resolved_fields
from finetune.trainer_config import TrainerConfig

logger = logging.getLogger(__name__)

# Panoptic post-processing defaults shared by training evaluation, `finetune/evaluate.py`,
# `finetune/predict.py` and the demo, so that every PQ this project reports uses the same ones
# (DETR's panoptic demo values).
DEFAULT_THRESHOLD = 0.85
DEFAULT_MASK_THRESHOLD = 0.5
DEFAULT_OVERLAP_MASK_AREA_THRESHOLD = 0.8

# DETR's augmentation recipe (facebookresearch/detr datasets/coco.py): multi-scale shortest edges, the
# longest-edge cap, and the random-resized-crop branch. Defined here, not in `finetune/data/transforms.py`,
# because this module must stay importable without torch.
DETR_SCALES = list(range(480, 801, 32))
DETR_MAX_SIZE = 1333
DETR_CROP_RESIZE_SCALES = [400, 500, 600]
DETR_CROP_MIN_SIZE = 384
DETR_CROP_MAX_SIZE = 600
DETR_EVAL_SIZE = 800

STAGE_NAMES = ("detection", "masks")
MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16", "fp8")


# Keys that older versions wrote into `training_config.yaml` and that are gone: a saved config stays a valid
# `--config`, the key is ignored with a warning. `run.debug_nan_loss_at_step` was a testing aid (the tests now
# inject the fault themselves: `tests/faulty_train.py`).
REMOVED_KEYS = {"run": ("debug_nan_loss_at_step",)}


@dataclass
class ModelConfig:
    """Where the weights come from."""

    model_name_or_path: str | None = "facebook/detr-resnet-50-panoptic"
    """Hub id or local folder of a `DetrForSegmentation` checkpoint; null = random init from `config_overrides`."""
    config_overrides: dict = field(default_factory=dict)
    """`DetrConfig` keyword arguments for a random init (used when `model_name_or_path` is null)."""
    class_map: dict = field(default_factory=dict)
    """Warm start of class-head rows: {dataset label name: pretrained class, by COCO-panoptic name or id}, e.g.
    {wall: wall-other-merged} or {wall: 199}; other classes warm-start by identical name."""


@dataclass
class DataConfig:
    """Dataset source, augmentation and loading."""

    dataset_dir: str | None = None
    """A `datasets.save_to_disk` folder or a COCO-panoptic folder (interface 1); null = build from the bundled sample."""
    sample_exports: list[str] = field(
        default_factory=lambda: ["sample_data/cvat_task_materials", "sample_data/cvat_task_machines"]
    )
    """CVAT exports converted into `output_dir/dataset` when `dataset_dir` is null (relative to the repo root)."""
    sample_stuff_labels: list[str] = field(default_factory=lambda: ["floor", "wall", "sky", "ground"])
    """CVAT labels of the converted sample that are stuff (amorphous regions); the others are things."""
    sample_val_ratio: float = 0.25
    """Share of the converted sample's images put in the evaluation split."""
    split_seed: int = 0
    """Seed of the train/val split of the converted sample (as `make convert-sample`: `--seed 0`); kept apart
    from `run.seed` so that changing the training seed keeps the same evaluation images."""
    train_split: str = "train"
    """Dataset split to train on."""
    eval_split: str = "val"
    """Dataset split to evaluate on (during training and for `all_results.json`)."""
    max_train_samples: int | None = None
    """Use only the first N training images (quick experiments, tests)."""
    max_eval_samples: int | None = None
    """Evaluate on only the first N images (quick experiments, tests); null = all."""
    train_scales: list[int] = field(default_factory=lambda: list(DETR_SCALES))
    """Shortest-edge sizes drawn per image (DETR's multi-scale training: 480, 512, ..., 800)."""
    max_size: int = DETR_MAX_SIZE
    """Longest-edge cap of training images, in pixels."""
    hflip_prob: float = 0.5
    """Probability of a horizontal flip of a training image."""
    random_crop: bool = True
    """DETR's 50% random resized crop branch: resize to `crop_resize_scales`, crop, then multi-scale resize."""
    crop_resize_scales: list[int] = field(default_factory=lambda: list(DETR_CROP_RESIZE_SCALES))
    """Shortest-edge sizes of the resize before the random crop."""
    crop_min_size: int = DETR_CROP_MIN_SIZE
    """Smallest side of the random crop, in pixels."""
    crop_max_size: int = DETR_CROP_MAX_SIZE
    """Largest side of the random crop, in pixels."""
    eval_size: int = DETR_EVAL_SIZE
    """Shortest edge at evaluation; also the size saved in the final image processor."""
    eval_max_size: int = DETR_MAX_SIZE
    """Longest-edge cap at evaluation (also saved in the final image processor)."""
    num_workers: int = 2
    """DataLoader worker processes per training process (0 = load in the training process)."""
    pin_memory: bool = True
    """Pin host memory of batches (faster copies to a GPU)."""


@dataclass
class StageConfig:
    """One training stage (`detection` or `masks`). CLI names are prefixed: `--detection_epochs`."""

    epochs: int = 1
    """Epochs of this stage."""
    batch_size: int = 2
    """Images per batch and process."""
    lr: float = 1e-4
    """Learning rate of the transformer and heads (AdamW)."""
    backbone_lr: float = 1e-5
    """Learning rate of the backbone's trainable stages; 0 freezes the backbone."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    max_grad_norm: float | None = 0.1
    """Gradient-norm clip (DETR: 0.1); null = no clipping."""
    lr_drop_epochs: int | None = None
    """Multiply the LR by `lr_gamma` every this many epochs (StepLR: again at each multiple); null = once, at 2/3 of
    the stage."""
    lr_gamma: float = 0.1
    """Factor of each LR drop (StepLR gamma)."""


@dataclass
class EvalConfig:
    """Evaluation during and after training."""

    eval_every_epochs: int = 1
    """Evaluate after every N-th epoch of a stage (and always after its last epoch); 0 = only after the last."""
    eval_batch_size: int = 2
    """Images per evaluation batch and process."""
    threshold: float = DEFAULT_THRESHOLD
    """Minimum class score of a query kept by panoptic post-processing (DETR's demo uses 0.85)."""
    mask_threshold: float = DEFAULT_MASK_THRESHOLD
    """Mask probability above which a pixel belongs to a segment."""
    overlap_mask_area_threshold: float = DEFAULT_OVERLAP_MASK_AREA_THRESHOLD
    """Drop a segment when less than this share of its mask survives overlaps."""


@dataclass
class RunConfig:
    """The run as a whole."""

    output_dir: str = "outputs/detr-panoptic"
    """Folder of the run: checkpoints/, best_<stage>/, final/, metrics.jsonl (must be writable)."""
    seed: int = 42
    """Seed of weights, augmentation and data order."""
    stages: list[str] = field(default_factory=lambda: list(STAGE_NAMES))
    """Stages to train, in order: detection, masks (e.g. `masks` alone from a detection checkpoint)."""
    resume_from_checkpoint: str | None = None
    """`latest` (newest checkpoint in `output_dir/checkpoints`) or a checkpoint folder."""
    overwrite_output_dir: bool = False
    """Replace a previous run in `output_dir` (its converted `dataset/` is kept)."""
    mixed_precision: str | None = None
    """no, fp16, bf16 or fp8 (a GPU feature); null = the launcher's (`accelerate launch --mixed_precision`,
    `accelerate config`; `no` without a launcher). A value set here wins over the launcher's."""
    gradient_accumulation_steps: int = 1
    """Batches per optimiser step."""
    save_every_epochs: int | None = None
    """Write a resumable checkpoint (and the pending `best_<stage>/`) every N epochs of a stage and after its
    last epoch; null = after each evaluation (`eval_every_epochs`) and the last epoch; 0 = after the last only."""
    save_total_limit: int | None = 2
    """Keep the N newest epoch checkpoints (null = keep all). `best_<stage>/` is kept separately."""


@dataclass
class LoggingConfig:
    """Metrics logging."""

    report_to: list[str] = field(default_factory=list)
    """Accelerate trackers (`tensorboard`, `wandb`, ...); `all` = every installed one; empty or `none` = JSON lines
    only."""
    logging_steps: int = 10
    """Write a training-loss line to metrics.jsonl / the trackers every N optimiser steps."""
    project_name: str = "detr-panoptic"
    """Project (run group) name given to the trackers."""


@dataclass
class HubConfig:
    """Pushing the final model to the Hugging Face Hub."""

    push_to_hub: bool = False
    """Upload `final/` with its model card at the end; the token and repo are checked before training."""
    hub_model_id: str | None = None
    """USER/NAME or ORG/NAME of the Hub repo (created when missing)."""
    hub_private: bool = False
    """Create the Hub repo private."""


@dataclass
class TrainingConfig:
    """The whole run. Build with `parse_config(argv)` or `TrainingConfig.from_dict(...)`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    detection: StageConfig = field(default_factory=lambda: StageConfig(epochs=50))
    masks: StageConfig = field(default_factory=lambda: StageConfig(epochs=25))
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def stage(self, name: str) -> StageConfig:
        """The section of stage `name` (`detection` or `masks`)."""
        return getattr(self, name)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainingConfig:
        """Build from a nested dict (a parsed YAML file); unknown sections or keys raise `ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {unknown}; valid sections: {sorted(sections)}")
        defaults = cls()
        built = {}
        for name in sections:
            section_default = getattr(defaults, name)
            values = data.get(name) or {}
            if not isinstance(values, dict):
                raise ConfigError(
                    f"{source}: section '{name}' must be a mapping, got {type(values).__name__}"
                )
            known = {f.name for f in dataclasses.fields(section_default)}
            removed = [key for key in REMOVED_KEYS.get(name, ()) if key in values]
            if removed:
                logger.warning(f"{source}: ignored key(s) {removed} of section '{name}', no longer used")
                values = {key: value for key, value in values.items() if key not in removed}
            bad = sorted(set(values) - known)
            if bad:
                raise ConfigError(
                    f"{source}: unknown key(s) {bad} in section '{name}'; valid keys: {sorted(known)}"
                )
            built[name] = dataclasses.replace(section_default, **values)
        return cls(**built)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write `training_config.yaml` (loadable with `load_config_file`)."""
        Path(path).write_text(self.to_yaml(), encoding="utf-8")

    def validate(self) -> TrainingConfig:
        """Check values once, raising `ConfigError` naming the offending key; returns self."""
        _check_types(self)
        if [tracker.lower() for tracker in self.logging.report_to] == ["none"]:  # transformers' spelling of "no tracker"
            self.logging.report_to = []
        stages = self.run.stages
        if not stages:
            raise ConfigError("run.stages: give at least one stage of " + ", ".join(STAGE_NAMES))
        bad = [s for s in stages if s not in STAGE_NAMES]
        if bad:
            raise ConfigError(f"run.stages: unknown stage(s) {bad}; valid: {list(STAGE_NAMES)}")
        if len(set(stages)) != len(stages) or list(stages) != sorted(stages, key=STAGE_NAMES.index):
            raise ConfigError(f"run.stages: {stages} must be distinct and in the order {list(STAGE_NAMES)}")
        for name in STAGE_NAMES:
            st = self.stage(name)
            if not st.lr > 0 or not math.isfinite(st.lr):
                raise ConfigError(f"{name}.lr must be a positive number, got {st.lr}")
            # 0 freezes the backbone (from_scratch.yaml does, for a random backbone under frozen BatchNorm).
            if not st.backbone_lr >= 0 or not math.isfinite(st.backbone_lr):
                raise ConfigError(
                    f"{name}.backbone_lr must be >= 0 (0 = frozen backbone), got {st.backbone_lr}"
                )
            for key in ("epochs", "batch_size"):
                if getattr(st, key) < 1:
                    raise ConfigError(f"{name}.{key} must be >= 1, got {getattr(st, key)}")
            if st.weight_decay < 0:
                raise ConfigError(f"{name}.weight_decay must be >= 0, got {st.weight_decay}")
            if st.max_grad_norm is not None and st.max_grad_norm <= 0:
                raise ConfigError(f"{name}.max_grad_norm must be > 0 or null, got {st.max_grad_norm}")
            if st.lr_drop_epochs is not None and st.lr_drop_epochs < 1:
                raise ConfigError(f"{name}.lr_drop_epochs must be >= 1 or null, got {st.lr_drop_epochs}")
            if not 0 < st.lr_gamma <= 1:
                raise ConfigError(f"{name}.lr_gamma must be in (0, 1], got {st.lr_gamma}")
        if self.model.model_name_or_path is None and not self.model.config_overrides:
            raise ConfigError(
                "model.config_overrides must describe the DetrConfig when model_name_or_path is null"
            )
        check_config_overrides(self.model.config_overrides)
        if self.run.mixed_precision is not None and self.run.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ConfigError(
                f"run.mixed_precision must be one of {list(MIXED_PRECISION_CHOICES)} or null (the launcher's), "
                f"got {self.run.mixed_precision!r}"
            )
        if self.run.gradient_accumulation_steps < 1:
            raise ConfigError("run.gradient_accumulation_steps must be >= 1")
        if self.run.save_every_epochs is not None and self.run.save_every_epochs < 0:
            raise ConfigError(
                "run.save_every_epochs must be >= 0 or null (null = at each evaluation, 0 = at the end of each stage)"
            )
        if self.run.save_total_limit is not None and self.run.save_total_limit < 1:
            raise ConfigError("run.save_total_limit must be >= 1 or null")
        if self.eval.eval_every_epochs < 0:
            raise ConfigError("eval.eval_every_epochs must be >= 0")
        if self.eval.eval_batch_size < 1:
            raise ConfigError("eval.eval_batch_size must be >= 1")
        if not self.data.train_scales:
            raise ConfigError("data.train_scales must list at least one size")
        if min(self.data.train_scales + [self.data.eval_size, self.data.max_size]) < 1:
            raise ConfigError("data: image sizes must be positive")
        if self.data.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")
        if self.logging.logging_steps < 1:
            raise ConfigError("logging.logging_steps must be >= 1")
        for problem in self.trainer.problems():
            raise ConfigError(problem)
        if self.hub.push_to_hub and not self.hub.hub_model_id:
            raise ConfigError(
                "hub.push_to_hub needs hub.hub_model_id (e.g. --hub_model_id user/detr-construction)"
            )
        return self



# --------------------------------------------------------------------------------------------- type checks

# `DetrConfig` keywords that are not fields: those it reads to build its backbone config, and `num_labels`
# (a property; `finetune.modeling.loading.load_model` refuses it with its own message).
_DETR_KEYWORDS = ("backbone", "use_timm_backbone", "use_pretrained_backbone", "backbone_kwargs", "num_labels")


def check_config_overrides(overrides: dict[str, Any], key: str = "model.config_overrides") -> None:
    """Refuse `DetrConfig` overrides that are not DetrConfig fields (a typo would otherwise be ignored).

    Args:
        overrides: the `config_overrides` mapping (DetrConfig keyword arguments).
        key: how the message names the setting.

    Raises:
        ConfigError: naming each unknown field and its close matches (`difflib.get_close_matches`).
    """
    from transformers import DetrConfig  # lazily: this module stays importable without transformers/torch

    known = {f.name for f in dataclasses.fields(DetrConfig)} | set(DetrConfig.attribute_map)
    known |= set(DetrConfig().to_dict()) | set(_DETR_KEYWORDS)
    unknown = sorted(name for name in overrides if name not in known)
    if unknown:
        hints = "; ".join(
            f"{name!r} (close matches: {', '.join(difflib.get_close_matches(name, known, n=3)) or 'none'})"
            for name in unknown
        )
        raise ConfigError(f"{key}: unknown DetrConfig field(s) {hints}")



def _check_types(config: TrainingConfig) -> None:
    """YAML gives untyped values: check each against its annotation (ints accepted for floats)."""
    for section_field in dataclasses.fields(config):
        section = getattr(config, section_field.name)
        for f, tp in resolved_fields(type(section)):
            value = getattr(section, f.name)
            base, optional = base_type(tp)
            key = f"{section_field.name}.{f.name}"
            if value is None:
                if not optional:
                    raise ConfigError(f"{key} must not be null")
                continue
            origin = typing.get_origin(base) or base
            if origin is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(section, f.name, float(value))
                continue
            ok = isinstance(value, origin) and not (origin is int and isinstance(value, bool))
            if ok and origin is list:
                (item_type,) = typing.get_args(base)
                ok = all(isinstance(v, item_type) for v in value)
            if not ok:
                raise ConfigError(f"{key} must be of type {base}, got {value!r}")


# ------------------------------------------------------------------------------------------ file + CLI


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a nested dict (sections)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot parse: {err}") from err
    return data or {}


def parse_config(argv: list[str] | None = None) -> TrainingConfig:
    """Parse `[--config FILE] [--key value ...]` into a validated `TrainingConfig`.

    Args:
        argv: command-line arguments without the program name (None = `sys.argv[1:]`).

    Raises:
        ConfigError: unknown keys, bad values, unreadable file.
    """
    config_path, overrides = parse_command_line(TrainingConfig, STAGE_NAMES, argv)
    data = load_config_file(config_path) if config_path else {}
    source = str(config_path) if config_path else "defaults"
    config = TrainingConfig.from_dict(data, source=source)
    for section, values in overrides.items():
        setattr(config, section, dataclasses.replace(getattr(config, section), **values))
    return config.validate()

