"""Epoch checkpoints: `accelerator.save_state` folders, their small JSON state, rotation, `latest`.

Layout::

    output_dir/checkpoints/<stage>-epoch<k>/     k = epochs of <stage> completed (1-based)
        model.safetensors, optimizer.bin, scheduler.bin, random_states_<rank>.pkl,     (accelerate)
        custom_checkpoint_<i>.pkl (the EMA, when on), scaler.pt (fp16 gradient scaler)
        trainer_state.json                                                            (this module)
        training_config.yaml

A checkpoint is written into a temporary sibling and renamed once complete, so a run killed while
saving never leaves a half-written `<stage>-epoch<k>` behind. A checkpoint damaged later (a file
truncated by a full disk, deleted by hand) is found before resuming (`check_checkpoint`): an explicit
`--resume_from_checkpoint DIR` stops with a one-line error naming the folder and the file, while
`--resume_from_checkpoint latest` takes the newest complete checkpoint and logs the ones it skipped.
A stage that stopped early (`TrainerState.stopped`) is done: resuming from its checkpoint goes on with
the next stage, as the uninterrupted run did. Resuming is epoch-granular: a run killed mid-epoch restarts that epoch from the last checkpoint (its
RNG state included), which reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger

from finetune.config import STAGE_NAMES, TrainingConfig
from finetune.training.export import plain_permissions

logger = get_logger(__name__)

STATE_FILE = "trainer_state.json"
CONFIG_FILE = "training_config.yaml"
# What `accelerator.save_state` writes for one model, optimizer and scheduler (besides RNG states).
MODEL_FILE = "model.safetensors"
TORCH_FILES = ("optimizer.bin", "scheduler.bin")
# Written by `save_state` when the run has them: one RNG pickle per process (`random_states_<rank>.pkl`),
# one pickle per object registered with `register_for_checkpointing` (the EMA), and the fp16 gradient scaler.
RNG_STATES_PATTERN = "random_states_*.pkl"
CUSTOM_OBJECTS_PATTERN = "custom_checkpoint_*.pkl"
SCALER_FILE = "scaler.pt"
_NAME = re.compile(r"^(?P<stage>[a-z]+)-epoch(?P<epoch>\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint asked for with `--resume_from_checkpoint` is missing or unreadable."""


@dataclass
class TrainerState:
    """Where training stands at the end of an epoch (saved next to each checkpoint).

    Attributes:
        stage: the stage the epoch belongs to.
        epoch: epochs of `stage` completed.
        global_step: optimiser steps since the start of the run, all stages together.
        best_metric: best value of the stage's metric so far (None before any evaluation).
        metric_name: `box_map` (detection) or `pq` (masks).
        last_eval: the metrics of the latest evaluation in this stage (for `all_results.json` after a resume).
        stage_records: per stage so far, what `train_results.json` and the model card report: ``epochs``
            trained, ``planned_epochs``, ``stopped_early``, ``train_seconds`` and ``eval_seconds``
            (wall-clock, across resumes; see `new_stage_record`).
        early_stopping: the stage's `EarlyStopping` state (`best`, `bad_evaluations`), so that a resumed
            stage stops where an uninterrupted one would.
        stopped: the stage stopped early after `epoch`: a resume from this checkpoint trains no more of it.
    """

    stage: str
    epoch: int
    global_step: int
    best_metric: float | None = None
    metric_name: str | None = None
    last_eval: dict | None = None
    stage_records: dict = field(default_factory=dict)
    early_stopping: dict = field(default_factory=dict)
    stopped: bool = False


def new_stage_record(planned_epochs: int) -> dict:
    """The record of a stage before its first epoch (`TrainerState.stage_records`).

    ``train_seconds`` counts the epochs' training steps, ``eval_seconds`` the evaluations (and keeping the
    best model); writing checkpoints is in neither. Both add up over resumes; the part of an epoch that a
    killed run did after its last checkpoint is redone on resume and counted once, in the redo.
    """
    return {"epochs": 0, "planned_epochs": planned_epochs, "stopped_early": False, "train_seconds": 0.0,
            "eval_seconds": 0.0}


# Keys of `trainer_state.json` files written by older versions, ignored when read: `stage_runtime` mixed
# training and evaluation time, so it cannot be carried over as either.
_LEGACY_STATE_KEYS = ("stage_runtime",)


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def read_trainer_state(checkpoint: str | Path) -> TrainerState:
    """The `trainer_state.json` of `checkpoint`.

    Raises:
        CheckpointError: missing, unreadable or not a state of a known stage (one line naming the file).
    """
    path = Path(checkpoint) / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        for key in _LEGACY_STATE_KEYS:
            data.pop(key, None)
        state = TrainerState(**data)
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {checkpoint}: {STATE_FILE} is missing (not a complete checkpoint)"
        ) from None
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint {checkpoint}: {STATE_FILE} is unreadable ({_one_line(err)})"
        ) from err
    if state.stage not in STAGE_NAMES:
        raise CheckpointError(f"checkpoint {checkpoint}: {STATE_FILE} names an unknown stage {state.stage!r}")
    return state


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def check_checkpoint(checkpoint: str | Path) -> TrainerState:
    """Check that every file a resume reads is there and not truncated; returns the trainer state.

    No tensor is loaded: the safetensors header must cover the whole file (a truncated file fails), the
    large torch files (zip archives: optimizer, scheduler, scaler) must have their central directory (at
    the end), and every record of the RNG states and of the EMA (`custom_checkpoint_*.pkl`) must pass its
    CRC. The RNG states must be there (`save_state` always writes them); the EMA and the scaler are
    checked when the checkpoint has them.

    Raises:
        CheckpointError: `checkpoint {path}: {file} is missing|truncated or corrupt (...)`, one line.
    """
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder}: no such folder")
    state = read_trainer_state(folder)
    for name in (MODEL_FILE, *TORCH_FILES):
        if not (folder / name).is_file():
            raise CheckpointError(f"checkpoint {folder}: {name} is missing (not a complete checkpoint)")
    try:
        from safetensors import safe_open

        with safe_open(str(folder / MODEL_FILE), framework="pt"):
            pass
    except Exception as err:  # safetensors raises its own error types for a bad header or a short file
        raise CheckpointError(
            f"checkpoint {folder}: {MODEL_FILE} is truncated or corrupt ({_one_line(err)})"
        ) from err
    scaler = [SCALER_FILE] if (folder / SCALER_FILE).exists() else []
    for name in (*TORCH_FILES, *scaler):
        _check_torch_archive(folder, name, read_all=False)
    rng_states = sorted(path.name for path in folder.glob(RNG_STATES_PATTERN))
    if not rng_states:
        raise CheckpointError(
            f"checkpoint {folder}: {RNG_STATES_PATTERN} is missing (not a complete checkpoint)"
        )
    for name in (*rng_states, *sorted(path.name for path in folder.glob(CUSTOM_OBJECTS_PATTERN))):
        _check_torch_archive(folder, name, read_all=True)
    return state


def _check_torch_archive(folder: Path, name: str, read_all: bool) -> None:
    """`torch.save` writes a zip archive (Accelerate's `.bin`, `.pt` and `.pkl` files alike).

    Args:
        folder: the checkpoint.
        name: the file in it.
        read_all: also check the CRC of every record (`ZipFile.testzip`, reads the whole file: used for the
            small RNG states and the EMA); otherwise only the central directory at the end, which a
            truncated file lacks.

    Raises:
        CheckpointError: naming the file, when it is not a complete archive.
    """
    try:
        with zipfile.ZipFile(folder / name) as archive:
            bad = archive.testzip() if read_all else None
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise CheckpointError(f"checkpoint {folder}: {name} is truncated or corrupt ({_one_line(err)})") from err
    if bad is not None:
        raise CheckpointError(f"checkpoint {folder}: {name} is truncated or corrupt (bad CRC in {bad})")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """The epoch checkpoint folders under `output_dir/checkpoints`, oldest first (by stage, then epoch).

    Ordered by their names, so that a damaged one does not hide the others; see `check_checkpoint`.
    """
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if path.is_dir() and match and match["stage"] in STAGE_NAMES:
            found.append((STAGE_NAMES.index(match["stage"]), int(match["epoch"]), path))
    return [path for *_, path in sorted(found)]


def resolve_checkpoint(resume_from: str, output_dir: str | Path) -> tuple[Path, TrainerState]:
    """The checkpoint to resume from and its state, checked with `check_checkpoint`.

    `latest`: the newest complete checkpoint of `output_dir`; damaged newer ones are skipped (and logged).
    Otherwise the given folder, which must be complete.

    Raises:
        CheckpointError: the folder is damaged, or `latest` finds no complete checkpoint.
    """
    if resume_from != "latest":
        path = Path(resume_from)
        return path, check_checkpoint(path)
    skipped = []
    for path in reversed(list_checkpoints(output_dir)):
        try:
            state = check_checkpoint(path)
        except CheckpointError as err:
            skipped.append(str(err))
            continue
        for reason in skipped:
            logger.warning(f"--resume_from_checkpoint latest: skipped {reason}")
        return path, state
    detail = f" ({'; '.join(skipped)})" if skipped else ""
    raise CheckpointError(
        f"--resume_from_checkpoint latest: no complete checkpoint in {checkpoints_dir(output_dir)}{detail}"
    )


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    state: TrainerState,
    config: TrainingConfig,
    save_total_limit: int | None,
) -> Path:
    """Save model/optimizer/scheduler/RNG of every process + state JSON, atomically; rotate old ones.

    Must be called on every process (each saves its RNG state).
    """
    root = checkpoints_dir(output_dir)
    final = root / f"{state.stage}-epoch{state.epoch}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        config.save(tmp / CONFIG_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
        plain_permissions(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        _rotate(output_dir, save_total_limit)
        logger.info(f"saved checkpoint {final}")
    accelerator.wait_for_everyone()
    return final


def _rotate(output_dir: str | Path, save_total_limit: int | None) -> None:
    if save_total_limit is None:
        return
    found = list_checkpoints(output_dir)
    for path in found[: max(0, len(found) - save_total_limit)]:
        shutil.rmtree(path)
        logger.info(f"removed old checkpoint {path} (save_total_limit={save_total_limit})")
