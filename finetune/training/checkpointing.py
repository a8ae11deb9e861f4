"""Epoch checkpoints: `accelerator.save_state` folders, their small JSON state, rotation, `latest`.

Layout::

    output_dir/checkpoints/<stage>-epoch<k>/     k = epochs of <stage> completed (1-based)
        model.safetensors, optimizer.bin, scheduler.bin, random_states_<rank>.pkl, ...  (accelerate)
        trainer_state.json                                                            (this module)
        training_config.yaml

A checkpoint is written into a temporary sibling and renamed once complete, so a run killed while
saving never leaves a half-written `<stage>-epoch<k>` behind; `trainer_state.json` marks complete ones.
Resuming is epoch-granular: a run killed mid-epoch restarts that epoch from the last checkpoint (its
RNG state included), which reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger

from finetune.config import STAGE_NAMES, TrainingConfig

logger = get_logger(__name__)

STATE_FILE = "trainer_state.json"
CONFIG_FILE = "training_config.yaml"
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
    """

    stage: str
    epoch: int
    global_step: int
    best_metric: float | None = None
    metric_name: str | None = None
    last_eval: dict | None = None

    def sort_key(self) -> tuple[int, int, int]:
        return (STAGE_NAMES.index(self.stage), self.epoch, self.global_step)


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def read_trainer_state(checkpoint: str | Path) -> TrainerState:
    path = Path(checkpoint) / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        state = TrainerState(**data)
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"{checkpoint}: not a complete training checkpoint ({path}: {err})") from err
    if state.stage not in STAGE_NAMES:
        raise CheckpointError(f"{path}: unknown stage {state.stage!r}")
    return state


def list_checkpoints(output_dir: str | Path) -> list[tuple[Path, TrainerState]]:
    """Complete checkpoints under `output_dir/checkpoints`, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and _NAME.match(path.name) and (path / STATE_FILE).is_file():
            found.append((path, read_trainer_state(path)))
    return sorted(found, key=lambda item: item[1].sort_key())


def resolve_checkpoint(resume_from: str, output_dir: str | Path) -> Path:
    """`latest` -> newest complete checkpoint of `output_dir`; otherwise the given folder (checked)."""
    if resume_from == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise CheckpointError(
                f"--resume_from_checkpoint latest: no checkpoint in {checkpoints_dir(output_dir)}"
            )
        return found[-1][0]
    path = Path(resume_from)
    read_trainer_state(path)  # raises a clear error when incomplete
    return path


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
    for path, _ in found[: max(0, len(found) - save_total_limit)]:
        shutil.rmtree(path)
        logger.info(f"removed old checkpoint {path} (save_total_limit={save_total_limit})")
