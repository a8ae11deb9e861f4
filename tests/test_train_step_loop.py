"""The step loop of `train_one_epoch` on a toy model: at most one host sync per logging interval, non-finite
steps detected on the device and named at the end of their interval, the loss window averaged on the device."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from accelerate import Accelerator

from finetune.training import loop
from finetune.training.loop import NonFiniteLossError, train_one_epoch
from finetune.training.metrics_log import MetricsLogger
from finetune.training.speed import make_adamw
from tests.train_runs import read_jsonl

# Every Tensor method that copies a value to the host (and so waits for the device).
SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "__format__")


def _toy_loss(model, stage, pixel_values, pixel_mask, labels):
    """Stands in for `compute_stage_loss` (whose Hungarian matching syncs by itself): a loss with no sync."""
    loss = model(pixel_values).pow(2).mean()
    return loss, {"loss_ce": loss.detach(), "loss_ce_0": 2 * loss.detach()}


def _batches(n: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    return [
        {"pixel_values": torch.randn(2, 4, generator=generator), "pixel_mask": None, "labels": []} for _ in range(n)
    ]


def _run(tmp_path, steps: int, logging_steps: int, **kwargs) -> tuple[torch.nn.Module, int, list[dict]]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = make_adamw([{"params": list(model.parameters())}], lr=1e-2, weight_decay=0.0, fused=True)
    accelerator = Accelerator(cpu=True)
    metrics = MetricsLogger(accelerator, tmp_path / f"metrics-{steps}.jsonl")
    step, _ = train_one_epoch(
        model, "detection", _batches(steps), optimizer, accelerator, 0.1, 0, 0, metrics, logging_steps, **kwargs
    )
    records = read_jsonl(metrics.path) if metrics.path.exists() else []
    return model, step, records


@contextmanager
def _counting_host_syncs(monkeypatch):
    counter = {"syncs": 0}

    def counted(original):
        def method(self, *args, **kwargs):
            counter["syncs"] += 1
            return original(self, *args, **kwargs)

        return method

    with monkeypatch.context() as patch:
        for name in SYNC_METHODS:
            patch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
        yield counter


@pytest.mark.parametrize("logging_steps", [1, 5])
def test_at_most_one_host_sync_per_logging_interval(tmp_path, monkeypatch, fresh_accelerate_state, logging_steps):
    monkeypatch.setattr(loop, "compute_stage_loss", _toy_loss)
    syncs = {}
    for steps in (10, 30):  # the difference drops what happens once per epoch
        with _counting_host_syncs(monkeypatch) as counter:
            _run(tmp_path, steps, logging_steps, check_gradients=True)
        syncs[steps] = counter["syncs"]
    per_step = (syncs[30] - syncs[10]) / 20
    assert per_step <= 1 / logging_steps + 0.05, syncs


def test_logged_loss_is_the_mean_of_the_interval(tmp_path, monkeypatch, fresh_accelerate_state):
    losses = []

    def recording_loss(*args):
        loss, components = _toy_loss(*args)
        losses.append(float(loss.detach()))
        return loss, components

    monkeypatch.setattr(loop, "compute_stage_loss", recording_loss)
    _, step, records = _run(tmp_path, 6, 3)
    assert step == 6 and [r["step"] for r in records] == [3, 6]
    for record, interval in zip(records, (losses[:3], losses[3:]), strict=True):
        assert record["loss"] == pytest.approx(sum(interval) / 3, rel=1e-6)
        assert record["loss_ce"] == pytest.approx(interval[-1], rel=1e-6)  # components: the interval's last step


@pytest.mark.parametrize(("nan_at_step", "stops_after"), [(3, 4), (7, 7)])
def test_non_finite_loss_is_named_at_the_end_of_its_interval(
    tmp_path, monkeypatch, fresh_accelerate_state, nan_at_step, stops_after
):
    """Step 3 is found at the log of step 4; step 7 (after the last log of a 7-step epoch) at the epoch's end.
    Until then the bad step's gradients are zeroed: the weights stay finite."""
    steps_run = []

    def counting_loss(*args):
        steps_run.append(len(steps_run) + 1)
        loss, components = _toy_loss(*args)
        return (loss * float("nan") if steps_run[-1] == nan_at_step else loss), components

    monkeypatch.setattr(loop, "compute_stage_loss", counting_loss)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = make_adamw([{"params": list(model.parameters())}], lr=1e-2, weight_decay=0.0, fused=True)
    accelerator = Accelerator(cpu=True)
    metrics = MetricsLogger(accelerator, tmp_path / "metrics.jsonl")
    with pytest.raises(NonFiniteLossError, match=rf"stage 'detection', epoch 1, step {nan_at_step} \(loss=nan; loss_ce="):
        train_one_epoch(
            model, "detection", _batches(7), optimizer, accelerator, 0.1, 0, 0, metrics, 4
        )
    assert steps_run[-1] == stops_after
    assert all(torch.isfinite(p).all() for p in model.parameters())
