"""The training loop of one stage: optimiser + scheduler, epochs of steps, evaluation, checkpoints.

`fit_stage` runs one stage (`detection` or `masks`) from its first (or resumed) epoch to its last:

    freeze_for_stage -> AdamW(param_groups) + StepLR -> accelerator.prepare
    for each epoch: train_one_epoch -> evaluate (every `eval_every_epochs`) -> keep the best weights
                    -> best_<stage>/ + checkpoint (`save_every_epochs`; default: after each evaluation and
                       the last epoch; see `finetune/training/best_model.py`)

The console shows one progress bar per stage (`epoch e/E`, step, loss, lr, elapsed and time left) and
one line per evaluation; the per-step numbers go to `metrics.jsonl` and the trackers.

Each stage prepares the model again (DDP registers only the parameters that require grad when it
wraps the model, and the trainable set changes between stages) together with its own optimiser,
scheduler and loader; `accelerator.free_memory()` drops the previous stage's objects first, so that
`save_state`/`load_state` always see exactly one model, optimiser and scheduler.

The stage's record (`TrainerState.stage_records`: epochs trained, whether it stopped early, training and
evaluation seconds) is updated after every epoch and saved with each checkpoint, so that it adds up
over resumes; `finetune/training/export.py` writes it to `train_results.json` for the model card. A
stage that stopped early is done: resumed from its last checkpoint, it trains no further epoch.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from finetune.config import StageConfig, TrainingConfig
from finetune.evaluation.loop import EvalContext, evaluate
from finetune.modeling.stages import compute_stage_loss, param_groups
from finetune.trainer_config import TrainerConfig
from finetune.training.checkpointing import TrainerState, new_stage_record, save_checkpoint
from finetune.training.early_stopping import EarlyStopping
from finetune.training.ema import WeightEma
from finetune.training.metrics_log import MetricsLogger
from finetune.training.speed import make_adamw

logger = get_logger(__name__)

STAGE_METRIC = {"detection": "box_map", "masks": "pq"}


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names stage, epoch and step."""


@dataclass
class RunSession:
    """Objects shared by the stages of one run (not the configuration of a stage).

    Attributes:
        accelerator: the run's Accelerator.
        config: the full configuration (saved with every checkpoint and best model).
        output_dir: where checkpoints, best models and metrics go.
        metrics: the JSON-lines / tracker logger.
        eval_loader: this process's shard of the evaluation set.
        eval_context: ground truth and post-processing settings of evaluation.
        save_best: `save_best(model, folder, metrics)` writes a loadable model folder (main process only).
        global_step: optimiser steps so far, all stages (updated by `fit_stage`).
        last_eval: the latest evaluation metrics per stage.
        flush_best: writes the best models `save_best` kept (called before each checkpoint); None = nothing kept.
        stage_records: per stage, epochs trained, early stop, training and evaluation seconds (across
            resumes; `checkpointing.new_stage_record`), for `train_results.json` and the model card.
    """

    accelerator: Accelerator
    config: TrainingConfig
    output_dir: Path
    metrics: MetricsLogger
    eval_loader: torch.utils.data.DataLoader
    eval_context: EvalContext
    save_best: Callable[[torch.nn.Module, Path, dict[str, Any]], None]
    global_step: int = 0
    last_eval: dict[str, dict[str, Any]] = field(default_factory=dict)
    flush_best: Callable[[], None] | None = None
    stage_records: dict[str, dict[str, Any]] = field(default_factory=dict)


class _StepWindow:
    """The steps since the last log, kept on the device: read with one host sync per logging interval.

    Per micro-batch it adds the loss to a running sum, and keeps the first non-finite loss (or, with
    `check_gradients`, gradient norm) of the interval as a vector `[step, kind, loss, *components]` (step 0:
    none yet). Reading `.item()` of each loss instead would wait for the device on every step.
    """

    LOSS, GRADIENT = 1.0, 2.0

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss_sum = torch.zeros((), device=device)
        self.batches = 0
        self.first_bad: torch.Tensor | None = None  # (3 + number of components,) float32
        self.cycle_ok = torch.ones((), dtype=torch.bool, device=device)  # the accumulation cycle so far

    def add(self, loss: torch.Tensor, components: dict[str, torch.Tensor], step: int) -> None:
        """Record one micro-batch of optimiser step `step` (1-based, global)."""
        loss = loss.detach().float()
        self.loss_sum += loss
        self.batches += 1
        finite = torch.isfinite(loss)
        self.cycle_ok &= finite
        self._remember_first_bad(finite, self.LOSS, loss, components, step)

    def gradient_checked(
        self, norm: torch.Tensor, loss: torch.Tensor, components: dict[str, torch.Tensor], step: int
    ) -> None:
        """Record the (all-reduced, so identical on every process) gradient norm of optimiser step `step`."""
        finite = torch.isfinite(norm.detach().float())
        self.cycle_ok &= finite
        self._remember_first_bad(finite, self.GRADIENT, loss.detach().float(), components, step)

    def neutralise_bad_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Zero the gradients of an accumulation cycle that saw a non-finite loss or norm, then start the next.

        The run stops at the end of the logging interval; until then the weights must stay finite: one NaN
        gradient step would make every later loss of the interval NaN as well (and the EMA of the weights).
        """
        bad = ~self.cycle_ok
        for p in params:
            if p.grad is not None:
                p.grad.masked_fill_(bad, 0.0)
        self.cycle_ok = torch.ones((), dtype=torch.bool, device=self.device)

    def _remember_first_bad(
        self, finite: torch.Tensor, kind: float, loss: torch.Tensor, components: dict[str, torch.Tensor], step: int
    ) -> None:
        # full_like: filled on the device (a tensor from a Python number would be a host-to-device copy)
        values = [torch.full_like(loss, float(step)), torch.full_like(loss, kind), loss]
        vector = torch.stack(values + [v.detach().float().reshape(()) for v in components.values()])
        if self.first_bad is None:
            self.first_bad = torch.zeros_like(vector)
        newly_bad = ~finite & (self.first_bad[0] == 0)
        self.first_bad = torch.where(newly_bad, vector, self.first_bad)

    def read(
        self, accelerator: Accelerator, components: dict[str, torch.Tensor]
    ) -> tuple[float, dict[str, float], list[float] | None]:
        """One host sync (gathered over processes): (mean loss, mean components, first bad vector or None).

        Every process calls it at the same steps (a collective), so all of them stop at the same step.
        """
        last = [v.detach().float().reshape(()) for v in components.values()]
        bad = self.first_bad if self.first_bad is not None else self.loss_sum.new_zeros(3 + len(last))
        local = torch.stack([self.loss_sum, torch.full_like(self.loss_sum, float(self.batches)), *last])
        rows = accelerator.gather(torch.cat([local, bad])[None]).tolist()  # (processes, 2 + 2C + 3)
        loss_sum, batches = sum(r[0] for r in rows), sum(r[1] for r in rows)
        means = [sum(r[2 + i] for r in rows) / len(rows) for i in range(len(last))]
        bad_rows = [r[2 + len(last) :] for r in rows if r[2 + len(last)] > 0]
        first_bad = min(bad_rows, key=lambda r: r[0]) if bad_rows else None
        self.loss_sum = torch.zeros((), device=self.device)
        self.batches = 0
        self.first_bad = None
        return loss_sum / max(batches, 1), dict(zip(components, means, strict=True)), first_bad


def build_optimizer(
    model: torch.nn.Module, stage: str, stage_cfg: StageConfig, fused: bool = False
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the stage's trainable parameters (backbone at `backbone_lr`) and a per-epoch StepLR.

    The LR is multiplied by `lr_gamma` every `lr_drop_epochs` epochs (StepLR); the default, 2/3 of the
    stage (DETR's 200 -> drop at 133 schedule), drops it once. `fused`: torch's fused AdamW where
    supported (`finetune.training.speed.make_adamw`).
    """
    groups = param_groups(model, stage, stage_cfg.lr, stage_cfg.backbone_lr, stage_cfg.weight_decay)
    optimizer = make_adamw(groups, stage_cfg.lr, stage_cfg.weight_decay, fused)
    drop = stage_cfg.lr_drop_epochs or max(1, math.ceil(stage_cfg.epochs * 2 / 3))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=drop, gamma=stage_cfg.lr_gamma)
    return optimizer, scheduler


def train_one_epoch(
    model: torch.nn.Module,
    stage: str,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    max_grad_norm: float | None,
    epoch: int,
    global_step: int,
    metrics: MetricsLogger,
    logging_steps: int,
    progress: tqdm | None = None,
    after_step: Callable[[], None] | None = None,
    check_gradients: bool = False,
) -> tuple[int, float]:
    """One pass over `loader` with gradient accumulation and clipping.

    Args:
        model: the prepared `DetrForSegmentation` (frozen for `stage`).
        loader: the prepared training loader (batches of `PanopticCollator`).
        max_grad_norm: clip the global gradient norm to this (None = no clipping).
        epoch: 0-based epoch of the stage (for logs and errors).
        global_step: optimiser steps before this epoch.
        progress: the stage's progress bar (advanced per batch; None = no bar).
        after_step: called after every optimiser step (the EMA update).
        check_gradients: stop on a non-finite gradient norm (not under fp16, whose scaler skips those steps).

    Returns:
        (global step after the epoch, mean training loss over all processes).

    Raises:
        NonFiniteLossError: a loss on any process (or, with `check_gradients`, the gradient norm) was NaN/inf.
            Detected on the device and read at each logging step and at the end of the epoch (one host sync
            per logging interval, gathered over processes so that all stop together): the run stops at the
            end of the bad step's logging interval, naming that step; the gradients of the bad step are
            zeroed so that the weights stay finite until then.
    """
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    progress = progress if progress is not None else tqdm(disable=True)
    total_loss, batches = torch.zeros((), device=accelerator.device), 0
    window = _StepWindow(accelerator.device)
    components: dict[str, torch.Tensor] = {}
    for batch in loader:
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss, components = compute_stage_loss(
                    model, stage, batch["pixel_values"], batch["pixel_mask"], batch["labels"]
                )
            window.add(loss, components, global_step + 1)
            accelerator.backward(loss)
            check = check_gradients and accelerator.mixed_precision != "fp16"
            if accelerator.sync_gradients:
                if max_grad_norm is not None or check:
                    norm = accelerator.clip_grad_norm_(params, max_grad_norm if max_grad_norm else math.inf)
                    if check and norm is not None:
                        window.gradient_checked(norm, loss, components, global_step + 1)
                window.neutralise_bad_gradients(params)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        total_loss += loss.detach().float()
        batches += 1
        progress.update(1)
        if accelerator.sync_gradients:
            global_step += 1
            if after_step is not None:
                after_step()
            if global_step % logging_steps == 0:
                record = _log_window(window, components, accelerator, stage, epoch, global_step, optimizer, metrics)
                progress.set_postfix({"step": global_step, "loss": f"{record['loss']:.3f}", "lr": f"{record['lr']:.2g}"})
    if window.batches:  # the steps after the last log: checked before the epoch counts as done
        _log_window(window, components, accelerator, stage, epoch, global_step, optimizer, None)
    mean_loss = accelerator.reduce(total_loss / max(batches, 1), reduction="mean")
    return global_step, float(mean_loss)


def _log_window(
    window: _StepWindow,
    components: dict[str, torch.Tensor],
    accelerator: Accelerator,
    stage: str,
    epoch: int,
    step: int,
    optimizer: torch.optim.Optimizer,
    metrics: MetricsLogger | None,
) -> dict[str, Any]:
    """Read the window (the interval's one host sync), stop on a non-finite step, log the record (if `metrics`).

    Raises:
        NonFiniteLossError: naming the interval's first non-finite step (its loss and components).
    """
    loss, means, first_bad = window.read(accelerator, components)
    if first_bad is not None:
        bad_step, kind, bad_loss, *values = first_bad
        parts = ", ".join(
            f"{k}={v:.4g}" for k, v in zip(components, values, strict=True) if not k.endswith(tuple("0123456789"))
        )
        if kind == _StepWindow.GRADIENT:
            raise NonFiniteLossError(
                f"non-finite gradient norm in stage '{stage}', epoch {epoch + 1}, step {int(bad_step)} "
                f"with a finite loss ({bad_loss:.4g}). Training stopped; the last good checkpoint is kept in "
                "checkpoints/ (a backbone trained at too high an lr under frozen BatchNorm does this: lower "
                "backbone_lr, or set it to 0 to freeze the backbone)."
            )
        raise NonFiniteLossError(
            f"non-finite training loss in stage '{stage}', epoch {epoch + 1}, step {int(bad_step)} "
            f"(loss={bad_loss}; {parts}). Training stopped; the last good checkpoint is kept in "
            "checkpoints/ (try a lower lr, max_grad_norm, or mixed_precision no)."
        )
    record = {"type": "train", "stage": stage, "epoch": epoch, "step": step, "loss": loss, **means}
    record["lr"] = optimizer.param_groups[0]["lr"]
    if metrics is not None:
        metrics.log(record)
    return record


def _should_evaluate(epoch: int, epochs: int, every: int) -> bool:
    last = epoch + 1 == epochs
    return last or (every > 0 and (epoch + 1) % every == 0)


def should_save(epoch: int, epochs: int, save_every: int | None, evaluated: bool) -> bool:
    """Checkpoint after 0-based `epoch`? Every `save_every` epochs, or (None) after each evaluation, or (0)
    never; always after the stage's last epoch."""
    if epoch + 1 == epochs:
        return True
    if save_every is None:
        return evaluated
    return save_every > 0 and (epoch + 1) % save_every == 0


def stage_progress(accelerator: Accelerator, stage: str, epochs: int, steps_per_epoch: int, epoch: int) -> tqdm:
    """The stage's bar: batches of all its epochs (so tqdm's time left covers the stage), from `epoch`."""
    return tqdm(
        total=epochs * steps_per_epoch,
        initial=epoch * steps_per_epoch,
        desc=stage,
        unit="batch",
        dynamic_ncols=True,
        mininterval=1.0,
        disable=not accelerator.is_local_main_process,
    )


def eval_summary(stage: str, epoch: int, epochs: int, results: dict[str, Any], train_loss: float) -> str:
    """One console line per evaluation: the stage metric first, then its parts (fractions in [0, 1])."""
    keys = ["box_map"] if stage == "detection" else ["pq", "pq_things", "pq_stuff", "sq", "rq", "box_map"]
    values = " ".join(f"{k} {results[k]:.4f}" for k in keys if isinstance(results.get(k), int | float))
    return f"{stage} epoch {epoch + 1}/{epochs}: {values} | train loss {train_loss:.4f}"


def fit_stage(
    session: RunSession,
    model: torch.nn.Module,
    stage: str,
    stage_cfg: StageConfig,
    make_train_loader: Callable[[int], torch.utils.data.DataLoader],
    resume: tuple[Path, TrainerState] | None = None,
) -> torch.nn.Module:
    """Train `model` through all epochs of `stage`; returns the unwrapped model.

    Args:
        session: the run's shared objects; `session.global_step` and `session.last_eval` are updated.
        model: the unwrapped `DetrForSegmentation`.
        stage: `detection` or `masks`.
        stage_cfg: the stage's section of the configuration.
        make_train_loader: `batch_size -> DataLoader` over the training set (not yet prepared).
        resume: a checkpoint of this stage to continue from (weights, optimiser, scheduler, RNG, epoch).
    """
    accelerator, config = session.accelerator, session.config
    accelerator.free_memory()  # forget the previous stage's model/optimizer/scheduler/loader
    trainer = config.trainer
    optimizer, scheduler = build_optimizer(model, stage, stage_cfg, trainer.fused_optimizer)  # also freezes
    n_trainable = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    logger.info(f"stage {stage}: {n_trainable:,} trainable parameters, {stage_cfg.epochs} epochs")
    prepared, optimizer, loader, scheduler = accelerator.prepare(
        model, optimizer, make_train_loader(stage_cfg.batch_size), scheduler
    )
    metric_name = STAGE_METRIC[stage]
    ema = _start_ema(accelerator, accelerator.unwrap_model(prepared), trainer)
    stopper = EarlyStopping(trainer.early_stopping_patience, trainer.early_stopping_min_delta)
    state = TrainerState(stage=stage, epoch=0, global_step=session.global_step, metric_name=metric_name)
    if resume is not None:
        path, state = resume
        accelerator.load_state(str(path))
        session.global_step = state.global_step
        if state.last_eval:
            session.last_eval[stage] = state.last_eval
        stopper.best = state.early_stopping.get("best")
        stopper.bad_evaluations = state.early_stopping.get("bad_evaluations", 0)
        logger.info(f"resumed stage {stage} after epoch {state.epoch} (step {state.global_step}) from {path}")

    for name, saved in state.stage_records.items():
        session.stage_records[name] = dict(saved)
    record = session.stage_records.setdefault(stage, new_stage_record(stage_cfg.epochs))
    record.update(planned_epochs=stage_cfg.epochs, epochs=state.epoch, stopped_early=state.stopped)
    first_epoch = state.epoch
    if state.stopped:  # an early stop is final: the uninterrupted run went on with the next stage here
        logger.info(f"stage {stage} stopped early after epoch {state.epoch}: nothing left to train in it")
        first_epoch = stage_cfg.epochs
    progress = stage_progress(accelerator, stage, stage_cfg.epochs, len(loader), min(first_epoch, stage_cfg.epochs))
    for epoch in range(first_epoch, stage_cfg.epochs):
        progress.set_description(f"{stage} epoch {epoch + 1}/{stage_cfg.epochs}")
        loader.set_epoch(epoch)
        started = time.monotonic()
        session.global_step, train_loss = train_one_epoch(
            prepared,
            stage,
            loader,
            optimizer,
            accelerator,
            stage_cfg.max_grad_norm,
            epoch,
            session.global_step,
            session.metrics,
            config.logging.logging_steps,
            progress,
            after_step=None if ema is None else lambda: ema.update(accelerator.unwrap_model(prepared)),
            check_gradients=trainer.check_finite_gradients,
        )
        epoch_lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        record["train_seconds"] += time.monotonic() - started
        log = {"type": "train_epoch", "stage": stage, "epoch": epoch, "step": session.global_step}
        session.metrics.log({**log, "loss": train_loss, "lr": epoch_lr})
        state.epoch, state.global_step = epoch + 1, session.global_step
        stop = False
        evaluated = _should_evaluate(epoch, stage_cfg.epochs, config.eval.eval_every_epochs)
        if evaluated:
            started = time.monotonic()
            inner = accelerator.unwrap_model(prepared)
            weights = nullcontext() if ema is None else ema.applied(inner)  # EMA: evaluated and saved
            with weights:
                results = evaluate(
                    inner, session.eval_loader, accelerator, session.eval_context, stage == "masks"
                )
                if state.best_metric is None or results[metric_name] > state.best_metric:
                    if accelerator.is_main_process:
                        session.save_best(inner, session.output_dir / f"best_{stage}", results)
                    accelerator.wait_for_everyone()
            session.metrics.log(
                {"type": "eval", "stage": stage, "epoch": epoch, "step": session.global_step, **results}
            )
            logger.info(eval_summary(stage, epoch, stage_cfg.epochs, results, train_loss))
            session.last_eval[stage] = state.last_eval = results
            if state.best_metric is None or results[metric_name] > state.best_metric:
                state.best_metric = results[metric_name]
            stop = trainer.early_stopping_patience > 0 and stopper.should_stop(results[metric_name])
            state.early_stopping = {"best": stopper.best, "bad_evaluations": stopper.bad_evaluations}
            record["eval_seconds"] += time.monotonic() - started
        state.stopped = stop
        record["epochs"], record["stopped_early"] = epoch + 1, stop
        state.stage_records = copy.deepcopy(session.stage_records)
        if stop or should_save(epoch, stage_cfg.epochs, config.run.save_every_epochs, evaluated):
            if session.flush_best is not None:
                session.flush_best()  # best_<stage>/ on disk matches this checkpoint's best_metric
            save_checkpoint(accelerator, session.output_dir, state, config, config.run.save_total_limit)
        if stop:
            logger.info(
                f"early stopping of stage {stage} after epoch {epoch + 1}: {metric_name} has not improved "
                f"on {stopper.best:.4f} for {stopper.bad_evaluations} evaluations"
            )
            break
    progress.close()
    return _finish_ema(accelerator, accelerator.unwrap_model(prepared), ema)


def _start_ema(accelerator: Accelerator, inner: torch.nn.Module, trainer: TrainerConfig) -> WeightEma | None:
    """The stage's EMA (None when `trainer.ema` is off), registered so that checkpoints hold its state."""
    if not trainer.ema:
        return None
    ema = WeightEma(inner, trainer.ema_decay, trainer.ema_tau)
    accelerator.register_for_checkpointing(ema)  # before `load_state`: a resumed stage gets its EMA back
    return ema


def _finish_ema(accelerator: Accelerator, inner: torch.nn.Module, ema: WeightEma | None) -> torch.nn.Module:
    """End of a stage: the EMA weights become the model's (they are what was evaluated); unregister it."""
    if ema is not None:
        ema.copy_to(inner)
        # Accelerate has no public way to unregister; the next stage registers its own EMA.
        accelerator._custom_objects = [obj for obj in accelerator._custom_objects if obj is not ema]
    return inner
