"""Write a loadable model folder: `best_<stage>/` during training and `final/` at the end (interface 3).

    config.json               DetrConfig: id2label/label2id, stuff_label_ids, category_ids (label ->
                              dataset id), label_colors (label -> dataset category colour),
                              panoptic_postprocess (the eval thresholds: every inference tool's defaults)
    model.safetensors
    preprocessor_config.json  DetrImageProcessor(format="coco_panoptic"), the evaluation size of training
    training_config.yaml      the run's configuration
    all_results.json          the metrics (final: last evaluation of each stage), fractions in [0, 1]
    train_results.json        final only: how it was trained (start point, hardware, data size, and per
                              stage the epochs trained, early stop, training and evaluation time), read
                              by the model card (`finetune/hub/model_card.py`)

Every file gets the permissions a plain `open` gives (0666 less the umask), like the rest of `output_dir`.

`pipeline("image-segmentation", model=folder)` and `PanopticPredictor.from_pretrained(folder)` load it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from dataset_scripts.atomic_io import atomic_directory, atomic_write_json
from dataset_scripts.preview import palette_color
from finetune.config import TrainingConfig
from finetune.modeling.loading import label_space

RESULTS_FILE = "all_results.json"
TRAIN_RESULTS_FILE = "train_results.json"
CONFIG_FILE = "training_config.yaml"


def save_model_folder(
    model: torch.nn.Module,
    image_processor: Any,
    folder: str | Path,
    config: TrainingConfig,
    categories: list[dict],
    results: dict[str, Any] | None = None,
    train_facts: dict[str, Any] | None = None,
) -> Path:
    """Save model + processor + config (+ results) into `folder`, replacing it atomically.

    Args:
        model: the unwrapped `DetrForSegmentation` (its config already has `stuff_label_ids`).
        image_processor: the `DetrImageProcessor` used for evaluation.
        folder: target folder (built in a temporary sibling, then renamed).
        config: the training configuration.
        categories: `load_categories(...)` in label order; their ids are saved as `config.category_ids`,
            their colours as `config.label_colors` (the shared palette for a category without one).
        results: metrics for `all_results.json`.
        train_facts: the run's facts for `train_results.json` (`run_facts(...)`); None = no file.

    `config.panoptic_postprocess` records the `eval` post-processing settings, so that inference and
    evaluation of the folder later default to the settings that produced `all_results.json`.
    """
    model.config.category_ids = [int(c["id"]) for c in categories]
    model.config.stuff_label_ids = label_space(categories)[2]
    model.config.label_colors = [
        [int(v) for v in (c.get("color") or palette_color(i))][:3] for i, c in enumerate(categories)
    ]
    model.config.panoptic_postprocess = {
        "threshold": float(config.eval.threshold),
        "mask_threshold": float(config.eval.mask_threshold),
        "overlap_mask_area_threshold": float(config.eval.overlap_mask_area_threshold),
    }
    with atomic_directory(folder, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        image_processor.save_pretrained(tmp)
        config.save(Path(tmp) / CONFIG_FILE)
        if results is not None:
            atomic_write_json(Path(tmp) / RESULTS_FILE, results, indent=2)
        if train_facts is not None:
            atomic_write_json(Path(tmp) / TRAIN_RESULTS_FILE, train_facts, indent=2)
        plain_permissions(Path(tmp))
    return Path(folder)


def plain_permissions(folder: Path) -> None:
    """safetensors writes `model.safetensors` 0600: give every file under `folder` what `open` gives
    (0666 & ~umask), like the rest of `output_dir`."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def final_results(last_eval: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`all_results.json`: the latest evaluation of each stage, later stages winning on shared keys.

    The masks stage evaluates box mAP too (of the same, frozen, detector), so after both stages every
    key describes the final weights.
    """
    results: dict[str, Any] = {}
    for stage in ("detection", "masks"):
        results.update(last_eval.get(stage, {}))
    return results


def device_description(device: torch.device) -> str:
    """`NVIDIA H200`, `Apple MPS`, or `CPU (x86_64, 16 cores)`: what the model card calls the hardware."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    if device.type == "cpu":
        return f"CPU ({platform.machine() or 'unknown'}, {os.cpu_count()} cores)"
    return device.type


def run_facts(
    config: TrainingConfig,
    device: torch.device,
    num_processes: int,
    mixed_precision: str,
    stage_records: dict[str, dict[str, Any]],
    train_samples: int,
    eval_samples: int,
) -> dict[str, Any]:
    """`train_results.json`: what the model card states about the run, measured (never guessed).

    Args:
        config: the run's configuration (start point).
        device: the device of the main process.
        num_processes: training processes (one per device).
        mixed_precision: Accelerate's precision (`no`, `fp16`, `bf16`, `fp8`).
        stage_records: per stage that made the final weights, in training order: ``epochs`` trained,
            ``planned_epochs``, ``stopped_early``, ``train_seconds``, ``eval_seconds`` (wall-clock, across
            resumes; `finetune.training.checkpointing.new_stage_record`).
        train_samples, eval_samples: images in the training and evaluation splits.

    Returns:
        The facts; ``stages`` holds the records (seconds rounded to 0.1 s), ``train_runtime`` and
        ``eval_runtime`` the sums of those rounded per-stage seconds.
    """
    source = config.model.model_name_or_path
    kind = "random_init" if source is None else ("local" if Path(source).expanduser().is_dir() else "hub")
    stages = {
        stage: {**record, "train_seconds": round(record["train_seconds"], 1), "eval_seconds": round(record["eval_seconds"], 1)}
        for stage, record in stage_records.items()
    }
    return {
        "started_from": {"kind": kind, "name": source, "config_overrides": config.model.config_overrides},
        "hardware": device_description(device),
        "num_processes": num_processes,
        "mixed_precision": mixed_precision,
        "stages": stages,
        # Sums of the rounded per-stage figures, so that the record adds up as printed.
        "train_runtime": round(sum(r["train_seconds"] for r in stages.values()), 1),
        "eval_runtime": round(sum(r["eval_seconds"] for r in stages.values()), 1),
        "train_samples": train_samples,
        "eval_samples": eval_samples,
    }
