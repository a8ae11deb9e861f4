"""One training run, after the configuration is parsed: set-up, checks, build, fit, save (+ push).

`finetune/train.py` parses the command line (a fast `--help`, configuration errors) and then calls `run`;
this module holds the heavy imports (torch, transformers, accelerate, datasets).

Writes into `output_dir`: `dataset/` (the converted sample, when no dataset is given), `checkpoints/`
(see `run.save_every_epochs`), `best_<stage>/`, `metrics.jsonl`, `final/` (the model to share, with
`all_results.json` and `train_results.json`) and `prediction_overlay.png` (the final model on an
evaluation image).
"""

from __future__ import annotations

import copy
import io
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dataset_scripts.atomic_io import atomic_write_bytes
from dataset_scripts.cvat.records import ConversionError
from dataset_scripts.panoptic_format import PanopticFormatError
from finetune.config import STAGE_NAMES, TrainingConfig
from finetune.data.collate import PanopticCollator
from finetune.data.dataset import PanopticTrainingDataset, category_to_label_map
from finetune.data.loading import build_dataloader, build_image_processor
from finetune.data.source import DatasetSourceError, load_dataset_splits
from finetune.data.transforms import build_eval_transforms, build_train_transforms
from finetune.evaluation.loop import EvalContext, shard_for_process
from finetune.hub.push import HubUploadError, ModelFolderError, push_model_dir
from finetune.modeling.loading import (
    ModelSetupError,
    ModelUnavailableError,
    label_space,
    load_model,
)
from finetune.modeling.random_init import calibrate_frozen_batchnorm
from finetune.training.best_model import BestModelKeeper
from finetune.training.checkpointing import MODEL_FILE, CheckpointError, TrainerState, resolve_checkpoint
from finetune.training.export import RESULTS_FILE, final_results, run_facts, save_model_folder
from finetune.training.loop import NonFiniteLossError, RunSession, fit_stage
from finetune.training.metrics_log import MetricsLogger
from finetune.training.preflight import OutputDirError, preflight
from finetune.training.speed import apply_speed_settings

logger = get_logger("finetune.train")  # also when run as a file (__name__ == "__main__")

OVERLAY_FILE = "prediction_overlay.png"


# ------------------------------------------------------------------------------------------------ setup


class _ConsoleHandler(logging.StreamHandler):
    """Writes through `tqdm.write`, so that a log line does not break the stage's progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # the logging module's contract: report, never raise
            self.handleError(record)


class _SingleProcessRank(logging.Filter):
    """Drops accelerate's `[RANK 0] ` prefix when there is one process (it only helps with several)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("[RANK 0] "):
            record.msg = record.msg[len("[RANK 0] ") :]
        return True


def setup_logging(accelerator: Accelerator) -> None:
    """INFO on the main process, WARNING elsewhere; accelerate's per-file save/load chatter silenced."""
    handler = _ConsoleHandler(sys.stderr)
    if accelerator.num_processes == 1:
        handler.addFilter(_SingleProcessRank())
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=logging.INFO,
        handlers=[handler],
    )
    if not accelerator.is_local_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    for name in ("accelerate.accelerator", "accelerate.checkpointing"):  # "Saving current state..." per file
        logging.getLogger(name).setLevel(logging.WARNING)
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" per save: one bar per stage only
    datasets.utils.logging.set_verbosity_warning()
    datasets.disable_progress_bars()


def _multi_process_without_accelerator() -> bool:
    """`torchrun --nproc_per_node N` on a machine without GPU: Accelerate only picks MULTI_CPU (gloo) with cpu=True."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    # (torch.accelerator.current_accelerator() names "cuda" on any CUDA build, even without a GPU.)
    has_accelerator = torch.cuda.is_available() or (
        hasattr(torch, "accelerator") and torch.accelerator.is_available()
    )
    return world_size > 1 and not has_accelerator


def setup_accelerator(config: TrainingConfig) -> Accelerator:
    """Accelerator with the run's precision, accumulation and trackers (StepLR is stepped per epoch).

    `run.mixed_precision` null passes None, so that Accelerate reads the launcher's setting
    (`ACCELERATE_MIXED_PRECISION`, set by `accelerate launch --mixed_precision` or `accelerate config`);
    a value given to `Accelerator` overrides the launcher's, so only an explicit config value is passed.
    """
    return Accelerator(
        cpu=_multi_process_without_accelerator(),
        mixed_precision=config.run.mixed_precision,
        gradient_accumulation_steps=config.run.gradient_accumulation_steps,
        log_with=config.logging.report_to or None,
        project_dir=config.run.output_dir,
        step_scheduler_with_optimizer=False,
    )


def effective_mixed_precision(accelerator: Accelerator) -> str:
    """The precision the run really trains in: Accelerate ignores fp16 on a CPU (no autocast, no gradient scaler).

    Returns `accelerator.mixed_precision` (`no`, `fp16`, `bf16`, `fp8`), or `no` for fp16 without AMP.
    """
    precision = str(accelerator.mixed_precision)
    if precision == "fp16" and not accelerator.native_amp:
        return "no"
    return precision


def prepare_output_dir(config: TrainingConfig, accelerator: Accelerator) -> Path:
    """Create `output_dir`; refuse to mix a new run into an old one unless resuming or overwriting.

    `overwrite_output_dir` removes the previous run's results but keeps `dataset/` (the converted sample).
    """
    output_dir = Path(config.run.output_dir)
    previous = [output_dir / name for name in ("checkpoints", "final", "metrics.jsonl")] + list(
        output_dir.glob("best_*")
    )
    previous = [p for p in previous if p.exists()]
    if previous and not config.run.resume_from_checkpoint:
        if not config.run.overwrite_output_dir:
            raise CheckpointError(
                f"{output_dir} holds a previous run ({', '.join(p.name for p in previous)}): continue it with "
                "--resume_from_checkpoint latest, or start over with --overwrite_output_dir true"
            )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for path in previous:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    accelerator.wait_for_everyone()
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def tracker_config(config: TrainingConfig) -> dict[str, Any]:
    """The config flattened to scalars (TensorBoard hparams accept only numbers, strings and booleans)."""
    flat = {}
    for section, values in config.to_dict().items():
        for key, value in values.items():
            ok = isinstance(value, (int, float, str, bool))
            flat[f"{section}.{key}"] = value if ok else str(value)
    return flat


# ------------------------------------------------------------------------------------------------ build


@dataclass
class RunParts:
    """What `build_run` makes from the dataset and the configuration, before training.

    Attributes:
        model: the unwrapped `DetrForSegmentation`, labelled with the dataset's categories.
        image_processor: the `DetrImageProcessor` saved with the model (the evaluation resize).
        categories: the dataset categories in label order.
        eval_split: the evaluation split (Hugging Face dataset rows).
        session: the objects the stages share (accelerator, metrics, evaluation loader, best-model saver).
        make_train_loader: `batch_size -> DataLoader` over the augmented training set.
        train_samples: images in the training split (for `train_results.json`).
    """

    model: torch.nn.Module
    image_processor: Any
    categories: list[dict]
    eval_split: Any
    session: RunSession
    make_train_loader: Callable[[int], DataLoader]
    train_samples: int = 0


def build_eval_context(
    eval_split, categories: list[dict], image_processor, config: TrainingConfig
) -> EvalContext:
    return EvalContext(
        hf_split=eval_split,
        categories=categories,
        image_processor=image_processor,
        stuff_label_ids=set(label_space(categories)[2]),
        threshold=config.eval.threshold,
        mask_threshold=config.eval.mask_threshold,
        overlap_mask_area_threshold=config.eval.overlap_mask_area_threshold,
    )


def build_datasets(train_split, eval_split, categories: list[dict], config: TrainingConfig):
    """Torch datasets with DETR's training augmentation and the evaluation resize."""
    data = config.data
    category_to_label = category_to_label_map(categories)
    train_transforms = build_train_transforms(
        scales=data.train_scales,
        max_size=data.max_size,
        hflip_prob=data.hflip_prob,
        random_crop=data.random_crop,
        crop_resize_scales=data.crop_resize_scales,
        crop_min_size=data.crop_min_size,
        crop_max_size=data.crop_max_size,
    )
    train = PanopticTrainingDataset(train_split, category_to_label, train_transforms)
    evaluation = PanopticTrainingDataset(
        eval_split, category_to_label, build_eval_transforms(data.eval_size, data.eval_max_size)
    )
    return train, evaluation


def build_run(config: TrainingConfig, accelerator: Accelerator, output_dir: Path) -> RunParts:
    """Dataset splits, model, image processor, loaders and the shared run session."""
    train_split, eval_split, categories = load_dataset_splits(config.data, output_dir, accelerator)
    model = load_model(
        config.model.model_name_or_path, categories, config.model.class_map, config.model.config_overrides
    )
    # This dataset's ids (not those of a checkpoint we started from): evaluation maps labels with them.
    model.config.category_ids = [int(c["id"]) for c in categories]
    image_processor = build_image_processor(config.data.eval_size, config.data.eval_max_size)
    train_dataset, eval_dataset = build_datasets(train_split, eval_split, categories, config)
    collator = PanopticCollator(image_processor.image_mean, image_processor.image_std)
    if config.model.model_name_or_path is None:  # random backbone: frozen BatchNorm statistics from 16 images
        first = [train_dataset[(i, config.run.seed)] for i in range(min(16, len(train_dataset)))]
        calibrate_frozen_batchnorm(model, collator(first)["pixel_values"])
    eval_loader = DataLoader(
        shard_for_process(eval_dataset, accelerator),
        batch_size=config.eval.eval_batch_size,
        num_workers=config.data.num_workers,
        collate_fn=collator,
        # The same loader serves every evaluation: keep its workers instead of starting them each time.
        persistent_workers=config.data.num_workers > 0,
    )

    def make_train_loader(batch_size: int) -> DataLoader:
        data = config.data
        return build_dataloader(
            train_dataset, batch_size, True, data.num_workers, data.pin_memory, collator, config.run.seed
        )

    def write_model_folder(inner: torch.nn.Module, folder: Path, results: dict[str, Any]) -> None:
        save_model_folder(inner, image_processor, folder, config, categories, results)

    best = BestModelKeeper(write_model_folder)  # best_<stage>/ written with the checkpoints

    session = RunSession(
        accelerator=accelerator,
        config=config,
        output_dir=output_dir,
        metrics=MetricsLogger(accelerator, output_dir / "metrics.jsonl"),
        eval_loader=eval_loader,
        eval_context=build_eval_context(eval_split, categories, image_processor, config),
        save_best=best.remember,
        flush_best=best.flush,
    )
    return RunParts(
        model, image_processor, categories, eval_split, session, make_train_loader, len(train_split)
    )


# ------------------------------------------------------------------------------------------------ fit


def stages_to_run(config: TrainingConfig, resume: tuple[Path, TrainerState] | None) -> list[tuple[str, Any]]:
    """[(stage, resume checkpoint of that stage or None)] for the stages still to train."""
    if resume is None:
        return [(stage, None) for stage in config.run.stages]
    resumed_index = STAGE_NAMES.index(resume[1].stage)
    plan = []
    for stage in config.run.stages:
        index = STAGE_NAMES.index(stage)
        if index == resumed_index:
            plan.append((stage, resume))
        elif index > resumed_index:
            plan.append((stage, None))
    if not plan:
        raise CheckpointError(
            f"checkpoint {resume[0]} is from stage '{resume[1].stage}', after all of --stages {config.run.stages}"
        )
    return plan


def load_checkpoint_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Weights only (a checkpoint of a stage this run does not train, e.g. `--stages masks` after detection)."""
    model.load_state_dict(load_file(str(checkpoint / MODEL_FILE)), strict=True)


def fit(parts: RunParts, config: TrainingConfig, resume: tuple[Path, TrainerState] | None) -> torch.nn.Module:
    """Train the stages still to run (continuing `resume`); returns the unwrapped model."""
    session, model = parts.session, parts.model
    plan = stages_to_run(config, resume)
    if resume is not None:
        session.metrics.truncate_after(resume[1].global_step)
        # The stages the checkpoint went through are part of the final model's history, also when this run
        # trains none of them (`--stages masks` from a detection checkpoint).
        session.stage_records = copy.deepcopy(resume[1].stage_records)
        if all(stage_resume is None for _, stage_resume in plan):
            load_checkpoint_weights(model, resume[0])
            session.global_step = resume[1].global_step
    for stage, stage_resume in plan:
        model = fit_stage(
            session, model, stage, config.stage(stage), parts.make_train_loader, resume=stage_resume
        )
    return model


# ------------------------------------------------------------------------------------------------ save


def write_prediction_overlay(final_dir: Path, row: dict, categories: list[dict], out_path: Path) -> None:
    """Ground truth | the final model's prediction on one evaluation image, side by side (atomic write).

    The post-processing settings are the checkpoint's (the `eval` section, saved in `final/`); an
    empty prediction says so in its title instead of showing a bare photo.

    Args:
        final_dir: The saved final model folder.
        row: One evaluation row (``image``, ``panoptic`` RGB-encoded ids, ``segments_info``).
        categories: The dataset categories (``id``, ``name``, ``isthing``, optional ``color``).
        out_path: Where the PNG goes.
    """
    from dataset_scripts.panoptic_format import rgb2id
    from dataset_scripts.preview import draw_panoptic_overlay, side_by_side
    from finetune.inference import PanopticPredictor, render_overlay

    image = row["image"].convert("RGB")
    by_category = {c["id"]: c for c in categories}
    truth = []
    for segment in row["segments_info"]:
        category = by_category[segment["category_id"]]
        truth.append(
            {"id": segment["id"], "name": category["name"], "isthing": category["isthing"], "color": category.get("color")}
        )
    truth_ids = rgb2id(np.asarray(row["panoptic"].convert("RGB")))
    predictor = PanopticPredictor.from_pretrained(final_dir, device="cpu")
    (prediction,) = predictor.predict([image])
    title = "prediction"
    if not prediction.segments:
        title = f"prediction: no segment above threshold {predictor.threshold:g}"
    picture = side_by_side(
        [("ground truth", draw_panoptic_overlay(image, truth_ids, truth)), (title, render_overlay(image, prediction))]
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    atomic_write_bytes(out_path, buffer.getvalue())


def format_results(results: dict[str, Any]) -> str:
    lines = [f"  {k:<12} {v:.4f}" for k, v in results.items() if isinstance(v, float)]
    per_class = results.get("per_class_pq", {})
    if per_class:
        lines.append("  per-class PQ: " + ", ".join(f"{name} {pq:.3f}" for name, pq in per_class.items()))
    return "\n".join(lines)


def push_final(final_dir: Path, config: TrainingConfig, api: Any = None) -> str:
    """Upload `final_dir` through `push_to_hub.py`'s checks, model card and single commit."""
    return push_model_dir(final_dir, config.hub.hub_model_id, private=config.hub.hub_private, api=api)


def save_final(
    parts: RunParts, model: torch.nn.Module, config: TrainingConfig, output_dir: Path
) -> dict[str, Any]:
    """Write `final/` and the prediction overlay, push if asked (main process); returns the final metrics."""
    accelerator = parts.session.accelerator
    results = final_results(parts.session.last_eval)
    final_dir = output_dir / "final"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_model_folder(
            accelerator.unwrap_model(model),
            parts.image_processor,
            final_dir,
            config,
            parts.categories,
            results,
            run_facts(
                config,
                accelerator.device,
                accelerator.num_processes,
                effective_mixed_precision(accelerator),
                parts.session.stage_records,
                parts.train_samples,
                len(parts.eval_split),
            ),
        )
        logger.info(
            f"final model saved to {final_dir}; metrics ({final_dir / RESULTS_FILE}):\n{format_results(results)}"
        )
        eval_split = parts.eval_split
        if len(eval_split):
            write_prediction_overlay(final_dir, eval_split[0], parts.categories, output_dir / OVERLAY_FILE)
            logger.info(f"prediction overlay of {eval_split[0]['file_name']}: {output_dir / OVERLAY_FILE}")
        if config.hub.push_to_hub:
            push_final(final_dir, config)
    accelerator.wait_for_everyone()
    return results


# ------------------------------------------------------------------------------------------------ main

# User errors: logged as one line (no traceback), exit status 1.
USER_ERRORS = (
    ModelUnavailableError,
    ModelSetupError,
    NonFiniteLossError,
    CheckpointError,
    DatasetSourceError,
    ConversionError,
    PanopticFormatError,
    HubUploadError,
    ModelFolderError,
    OutputDirError,
)


def train(config: TrainingConfig, accelerator: Accelerator) -> dict[str, Any]:
    """setup (output folder, resume point, trackers) -> build -> fit -> save (+ push); returns the final metrics."""
    resume = None
    if config.run.resume_from_checkpoint:  # checked before anything is written
        resume = resolve_checkpoint(config.run.resume_from_checkpoint, config.run.output_dir)
    preflight(config, accelerator)  # model source, output folder, Hub token and repo: before any data work
    output_dir = prepare_output_dir(config, accelerator)
    set_seed(config.run.seed)
    if config.logging.report_to:
        accelerator.init_trackers(config.logging.project_name, config=tracker_config(config))
    parts = build_run(config, accelerator, output_dir)
    model = fit(parts, config, resume)
    results = save_final(parts, model, config, output_dir)
    accelerator.end_training()
    return results


def run(config: TrainingConfig) -> int:
    """setup (accelerator, logging) -> train (checks, build, fit, save, push); returns the exit status."""
    apply_speed_settings(config.trainer)  # threads, denormals: before torch starts working
    accelerator = setup_accelerator(config)
    setup_logging(accelerator)
    if effective_mixed_precision(accelerator) != accelerator.mixed_precision:
        logger.warning(
            f"mixed precision {accelerator.mixed_precision} is not available on {accelerator.device.type} "
            "(Accelerate runs fp16 only on GPUs): training in fp32; bf16 works on CPU"
        )
    try:
        train(config, accelerator)
    except USER_ERRORS as err:
        logger.error(f"{type(err).__name__}: {err}", main_process_only=False)
        return 1
    return 0
