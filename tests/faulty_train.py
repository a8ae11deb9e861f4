"""`finetune/train.py` with a fault injected at a known step, for the tests of what a failure leaves behind.

Launched in place of `finetune/train.py` (`accelerate_cmd(..., script=FAULTY_TRAIN)` in `tests/train_runs.py`);
the environment names the fault, for every process of the launch:

    DETR_PANOPTIC_TEST_KILL_AT_STEP=N  SIGKILL right after optimiser step N (global, all stages) and its log
                                       line: a stand-in for an out-of-memory kill or a preempted machine.
                                       N must be a logging step (`logging.logging_steps` divides it; the CI
                                       config logs every step).
    DETR_PANOPTIC_TEST_NAN_AT_STEP=N   the training loss of optimiser step N becomes NaN (the guard of
                                       `finetune.training.loop` must stop the run and name the step).

The training code has no hook for this: the script wraps two functions of `finetune.training.loop` (the
step's log, `_log_window`, and the loss, `compute_stage_loss`) and then runs the real script as `__main__`.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import runpy
import signal
import sys
from pathlib import Path

KILL_AT_STEP_ENV = "DETR_PANOPTIC_TEST_KILL_AT_STEP"
NAN_AT_STEP_ENV = "DETR_PANOPTIC_TEST_NAN_AT_STEP"
TRAIN = Path(__file__).resolve().parents[1] / "finetune" / "train.py"


def _kill_after_logged_step(loop, kill_at: int) -> None:
    original = loop._log_window
    signature = inspect.signature(original)

    @functools.wraps(original)
    def log_window(*args, **kwargs):
        record = original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        # The step's own log (with a metrics logger), not the end-of-epoch check of the steps after it.
        if bound.arguments["step"] == kill_at and bound.arguments["metrics"] is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return record

    loop._log_window = log_window


def _nan_loss_at_step(loop, nan_at: int) -> None:
    """The loss is computed once per micro-batch: the step of a call is the epoch's first step plus the
    micro-batches so far over the accumulation steps."""
    epoch_start = {"step": 0, "calls": 0, "accumulation": 1}
    train_one_epoch, compute_stage_loss = loop.train_one_epoch, loop.compute_stage_loss
    signature = inspect.signature(train_one_epoch)

    @functools.wraps(train_one_epoch)
    def counting_epoch(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        accelerator = bound.arguments["accelerator"]
        epoch_start.update(
            step=bound.arguments["global_step"], calls=0, accumulation=accelerator.gradient_accumulation_steps
        )
        return train_one_epoch(*args, **kwargs)

    @functools.wraps(compute_stage_loss)
    def poisoned_loss(*args, **kwargs):
        loss, components = compute_stage_loss(*args, **kwargs)
        epoch_start["calls"] += 1
        step = epoch_start["step"] + math.ceil(epoch_start["calls"] / epoch_start["accumulation"])
        return (loss * float("nan"), components) if step == nan_at else (loss, components)

    loop.train_one_epoch, loop.compute_stage_loss = counting_epoch, poisoned_loss


def main() -> None:
    from finetune.training import loop

    if os.environ.get(KILL_AT_STEP_ENV):
        _kill_after_logged_step(loop, int(os.environ[KILL_AT_STEP_ENV]))
    if os.environ.get(NAN_AT_STEP_ENV):
        _nan_loss_at_step(loop, int(os.environ[NAN_AT_STEP_ENV]))
    sys.argv[0] = str(TRAIN)
    runpy.run_path(str(TRAIN), run_name="__main__")


if __name__ == "__main__":
    main()
