"""EMA of the weights, early stopping, fused AdamW and the `trainer` config section (unit level);
one short `accelerate launch` run with EMA + early stopping on (what it evaluates and saves)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from finetune.config import ConfigError, parse_config
from finetune.training.early_stopping import EarlyStopping
from finetune.training.ema import WeightEma
from finetune.training.speed import make_adamw
from tests.faulty_train import KILL_AT_STEP_ENV
from tests.train_runs import (
    FAULTY_TRAIN,
    accelerate_cmd,
    read_jsonl,
    run_training,
    sample_export_args,
    train_env,
)


def _two_layer_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)  # a frozen part: not tracked
    return model


def test_ema_blends_trainable_weights_only():
    model = _two_layer_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = WeightEma(model, decay=0.75, tau=0)
    assert set(ema.shadow) == {"1.weight", "1.bias"}
    with torch.no_grad():
        model[1].weight.add_(4.0)
    ema.update(model)
    # shadow = 0.75 * old + 0.25 * (old + 4) = old + 1
    torch.testing.assert_close(ema.shadow["1.weight"], start["1.weight"] + 1.0)
    with ema.applied(model):
        torch.testing.assert_close(model[1].weight, start["1.weight"] + 1.0)
    torch.testing.assert_close(model[1].weight, start["1.weight"] + 4.0)  # raw weights restored
    ema.copy_to(model)
    torch.testing.assert_close(model[1].weight, start["1.weight"] + 1.0)
    torch.testing.assert_close(model[0].weight, start["0.weight"])


def test_ema_warm_up_and_state_round_trip():
    model = _two_layer_model()
    ema = WeightEma(model, decay=0.999, tau=10)
    assert ema.current_decay() < 0.1  # follows the weights closely at the start
    for _ in range(50):
        ema.update(model)
    assert 0.99 < ema.current_decay() < 0.999
    other = WeightEma(_two_layer_model(), decay=0.5, tau=0)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 50 and other.decay == 0.999 and other.tau == 10
    with pytest.raises(ValueError):
        WeightEma(model, decay=1.0, tau=0)


def test_early_stopping_counts_evaluations_without_improvement():
    stopper = EarlyStopping(patience=2, min_delta=0.01)
    decisions = [stopper.should_stop(m) for m in (0.10, 0.20, 0.205, 0.30, 0.29, 0.25)]
    assert decisions == [False, False, False, False, False, True]
    assert stopper.best == 0.30
    never = EarlyStopping(patience=0)
    assert not any(never.should_stop(m) for m in (0.5, 0.4, 0.3, 0.2))


def test_make_adamw_fused_on_cpu_and_fallback():
    params = [torch.nn.Parameter(torch.randn(3))]
    fused = make_adamw([{"params": params}], lr=1e-3, weight_decay=0.0, fused=True)
    assert fused.defaults["fused"] is True
    plain = make_adamw([{"params": params}], lr=1e-3, weight_decay=0.0, fused=False)
    assert not plain.defaults["fused"]
    params[0].grad = torch.ones(3)
    before = params[0].detach().clone()
    fused.step()
    assert not torch.equal(before, params[0].detach())


def test_trainer_section_from_cli_and_validation():
    config = parse_config(["--ema", "true", "--ema_decay", "0.9", "--early_stopping_patience", "3"])
    assert config.trainer.ema and config.trainer.ema_decay == 0.9
    assert config.trainer.early_stopping_patience == 3
    assert config.trainer.fused_optimizer and config.trainer.flush_denormal
    with pytest.raises(ConfigError, match="trainer.ema_decay"):
        parse_config(["--ema_decay", "1.5"])
    with pytest.raises(ConfigError, match="trainer.num_threads"):
        parse_config(["--num_threads", "0"])


@pytest.mark.slow
def test_ema_and_early_stopping_in_a_run(tmp_path):
    """EMA on: the final weights are the EMA ones (not the last raw step); patience 1 stops the
    detection stage at the first evaluation that does not improve box mAP (never later)."""
    out = tmp_path / "run"
    args = [
        *sample_export_args(tmp_path),
        "--ema", "true", "--ema_decay", "0.5", "--ema_tau", "0",
        "--early_stopping_patience", "1", "--early_stopping_min_delta", "1.0",  # nothing improves by 1
        "--detection_epochs", "4", "--eval_every_epochs", "1", "--stages", "detection",
    ]  # fmt: skip
    result = run_training(accelerate_cmd(out, *args))
    assert result.returncode == 0, result.stderr[-4000:]
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "eval"]
    assert [r["epoch"] for r in evals] == [0, 1]  # first eval sets the best, the second stops
    assert "early stopping of stage detection after epoch 2" in result.stderr
    final = load_file(str(out / "final" / "model.safetensors"))
    last_ckpt = sorted((out / "checkpoints").iterdir())[-1]
    raw = load_file(str(last_ckpt / "model.safetensors"))
    key = "detr.bbox_predictor.layers.2.weight"
    assert not torch.equal(final[key], raw[key])  # the saved result is the EMA, not the raw weights
    results = json.loads((out / "final" / "all_results.json").read_text())
    assert results["box_map"] == evals[-1]["box_map"]


@pytest.mark.slow
def test_early_stopping_count_survives_a_resume(tmp_path):
    """Patience 2, nothing ever improves: an uninterrupted run stops after epoch 3 (best at 1, then 2 bad
    evaluations). Killed in epoch 3 and resumed from the epoch-2 checkpoint, it must stop after epoch 3
    too; a count restarted from zero would run on to epoch 5."""
    out = tmp_path / "run"
    args = [
        *sample_export_args(tmp_path),
        "--early_stopping_patience", "2", "--early_stopping_min_delta", "1.0",
        "--detection_epochs", "5", "--eval_every_epochs", "1", "--stages", "detection",
    ]  # fmt: skip
    # 2 steps per epoch: step 5 is mid-epoch 3, after the checkpoint of epoch 2 (one bad evaluation).
    killed = run_training(accelerate_cmd(out, *args, script=FAULTY_TRAIN), env=train_env(**{KILL_AT_STEP_ENV: "5"}))
    assert killed.returncode != 0
    state = json.loads((out / "checkpoints" / "detection-epoch2" / "trainer_state.json").read_text())
    assert state["early_stopping"]["bad_evaluations"] == 1

    resumed = run_training(accelerate_cmd(out, *args, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "early stopping of stage detection after epoch 3" in resumed.stderr
    evals = [r["epoch"] for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "eval"]
    assert evals == [0, 1, 2]


@pytest.mark.slow
def test_a_stage_that_stopped_early_stays_stopped_when_resumed(tmp_path):
    """Patience 1, nothing improves: the stage stops after epoch 2 of 4 and checkpoints there. A run resumed
    from that checkpoint (e.g. after a kill before `final/` was written) must not train on: the loop used to
    restart at the checkpoint's epoch, ran epoch 3 and stopped again there."""
    out = tmp_path / "run"
    args = [
        *sample_export_args(tmp_path),
        "--ema", "true", "--ema_decay", "0.5", "--ema_tau", "0",
        "--early_stopping_patience", "1", "--early_stopping_min_delta", "1.0",
        "--detection_epochs", "4", "--eval_every_epochs", "1", "--stages", "detection",
    ]  # fmt: skip
    first = run_training(accelerate_cmd(out, *args))
    assert first.returncode == 0, first.stderr[-4000:]
    state = json.loads((out / "checkpoints" / "detection-epoch2" / "trainer_state.json").read_text())
    assert state["stopped"] is True and state["epoch"] == 2
    shutil.move(out / "final", tmp_path / "first_final")

    resumed = run_training(accelerate_cmd(out, *args, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "stage detection stopped early after epoch 2: nothing left to train in it" in resumed.stderr
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "eval"] == [0, 1]
    before = load_file(str(tmp_path / "first_final" / "model.safetensors"))
    after = load_file(str(out / "final" / "model.safetensors"))
    assert all(torch.equal(before[key], after[key]) for key in before)  # the EMA weights, as the first run's
    facts = json.loads((out / "final" / "train_results.json").read_text())
    assert facts["stages"]["detection"]["epochs"] == 2 and facts["stages"]["detection"]["stopped_early"] is True
    assert facts["stages"]["detection"]["planned_epochs"] == 4


def test_a_trainer_state_of_an_older_version_still_reads(tmp_path):
    """Checkpoints written before the run records kept `stage_runtime` (training and evaluation mixed): a
    resume from one reads it (the old times are dropped, not mislabelled) and the stage counts as not stopped."""
    from finetune.training.checkpointing import STATE_FILE, read_trainer_state

    old = {"stage": "detection", "epoch": 3, "global_step": 6, "best_metric": 0.1, "metric_name": "box_map",
           "last_eval": {"box_map": 0.1}, "stage_runtime": {"detection": 12.5}, "early_stopping": {}}
    (tmp_path / STATE_FILE).write_text(json.dumps(old))
    state = read_trainer_state(tmp_path)
    assert (state.stage, state.epoch, state.stopped, state.stage_records) == ("detection", 3, False, {})
