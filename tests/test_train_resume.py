"""Checkpoints: a run killed mid-epoch and resumed with `--resume_from_checkpoint latest` ends with the weights of
an uninterrupted run; damaged checkpoints are clear one-line errors (or skipped by `latest`); a non-finite loss
stops the run with a clear error and keeps the last good checkpoint."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune import train
from tests.faulty_train import KILL_AT_STEP_ENV, NAN_AT_STEP_ENV
from tests.train_runs import (
    CI_CONFIG,
    FAULTY_TRAIN,
    accelerate_cmd,
    read_jsonl,
    run_training,
    sample_export_args,
    train_env,
)

pytestmark = pytest.mark.slow

# 2 detection epochs (2 steps each) + 1 masks epoch: checkpoints after steps 2, 4 and 6.
SHAPE = ("--detection_epochs", "2", "--masks_epochs", "1", "--save_total_limit", "2")


@pytest.fixture(scope="module")
def sample_args(tmp_path_factory):
    return sample_export_args(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, sample_args) -> Path:
    """An uninterrupted run: checkpoints detection-epoch2 and masks-epoch1 are kept (save_total_limit 2)."""
    out = tmp_path_factory.mktemp("full") / "run"
    done = run_training(accelerate_cmd(out, *SHAPE, *sample_args))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _assert_same_weights(expected_dir: Path, got_dir: Path) -> None:
    expected = load_file(str(expected_dir / "model.safetensors"))
    got = load_file(str(got_dir / "model.safetensors"))
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_killed_run_resumes_to_identical_weights(tmp_path, full_run, sample_args):
    killed = tmp_path / "killed"
    # The trainer is SIGKILLed right after step 3: mid-epoch 2, after the first checkpoint (step 2).
    run = run_training(
        accelerate_cmd(killed, *SHAPE, *sample_args, script=FAULTY_TRAIN), env=train_env(**{KILL_AT_STEP_ENV: "3"})
    )
    assert run.returncode != 0
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["detection-epoch1"]
    assert not (killed / "final").exists()
    assert (
        max(r["step"] for r in read_jsonl(killed / "metrics.jsonl")) == 3
    )  # it did train past the checkpoint
    state = json.loads((killed / "checkpoints" / "detection-epoch1" / "trainer_state.json").read_text())
    assert state["stage"] == "detection" and state["epoch"] == 1 and state["global_step"] == 2

    resumed = run_training(accelerate_cmd(killed, *SHAPE, *sample_args, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed stage detection after epoch 1" in resumed.stderr
    _assert_same_weights(full_run / "final", killed / "final")
    # The time of the epoch trained before the kill is kept: the final record adds the resumed run's to it.
    facts = json.loads((killed / "final" / "train_results.json").read_text())
    before_kill = state["stage_records"]["detection"]
    assert before_kill["epochs"] == 1 and before_kill["train_seconds"] > 0 and before_kill["eval_seconds"] > 0
    assert facts["stages"]["detection"]["epochs"] == 2
    assert facts["stages"]["detection"]["train_seconds"] > before_kill["train_seconds"]
    assert facts["stages"]["detection"]["eval_seconds"] > before_kill["eval_seconds"]

    # The resumed run's log has each step once, as the uninterrupted one.
    steps = [(r["type"], r["stage"], r["step"]) for r in read_jsonl(killed / "metrics.jsonl")]
    assert steps == [(r["type"], r["stage"], r["step"]) for r in read_jsonl(full_run / "metrics.jsonl")]
    # save_total_limit 2: the oldest of the three epoch checkpoints is gone.
    names = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert names == ["detection-epoch2", "masks-epoch1"]


# ------------------------------------------------------------------------- damaged checkpoints (in-process)


@pytest.fixture
def run_copy(full_run, tmp_path) -> Path:
    """A copy of the finished run without its final model: what a resume would continue."""
    out = Path(shutil.copytree(full_run, tmp_path / "run"))
    shutil.rmtree(out / "final")
    return out


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _resume(out: Path, checkpoint: str, sample_args: list[str]) -> int:
    argv = ["--config", str(CI_CONFIG), "--output_dir", str(out), *SHAPE, *sample_args]
    return train.main([*argv, "--resume_from_checkpoint", checkpoint])


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    """Damage in the middle of the file: the length and the zip directory stay right, a record's CRC does not."""
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


def _add_truncated(path: Path, state: dict) -> None:
    """A file that `save_state` writes only for some runs (the EMA's state, the fp16 scaler), damaged."""
    torch.save(state, path)
    _truncate(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda c: _truncate(c / "model.safetensors"), "model.safetensors is truncated or corrupt"),
        (lambda c: (c / "optimizer.bin").unlink(), "optimizer.bin is missing (not a complete checkpoint)"),
        (lambda c: _truncate(c / "optimizer.bin"), "optimizer.bin is truncated or corrupt"),
        (lambda c: (c / "trainer_state.json").write_text("{"), "trainer_state.json is unreadable"),
        (lambda c: _truncate(c / "random_states_0.pkl"), "random_states_0.pkl is truncated or corrupt"),
        (lambda c: _flip_a_byte(c / "random_states_0.pkl"), "random_states_0.pkl is truncated or corrupt (bad CRC"),
        (lambda c: (c / "random_states_0.pkl").unlink(), "random_states_*.pkl is missing (not a complete checkpoint)"),
        (
            lambda c: _add_truncated(c / "custom_checkpoint_0.pkl", {"updates": 3, "shadow": {"w": torch.ones(999)}}),
            "custom_checkpoint_0.pkl is truncated or corrupt",
        ),
        (lambda c: _add_truncated(c / "scaler.pt", {"scale": 65536.0, "growth_tracker": 0}), "scaler.pt is truncated or corrupt"),
    ],
)
def test_damaged_checkpoint_is_a_one_line_error_and_nothing_is_written(
    run_copy, sample_args, damage, message, caplog, fresh_accelerate_state
):
    checkpoint = run_copy / "checkpoints" / "masks-epoch1"
    damage(checkpoint)
    before = _snapshot(run_copy)
    assert _resume(run_copy, str(checkpoint), sample_args) == 1
    [error] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"CheckpointError: checkpoint {checkpoint}: {message}" in error  # after "[RANK 0] "
    assert "\n" not in error and "Traceback" not in caplog.text
    assert _snapshot(run_copy) == before


def test_latest_skips_a_damaged_newest_checkpoint_and_logs_it(
    run_copy, full_run, sample_args, caplog, fresh_accelerate_state
):
    newest = run_copy / "checkpoints" / "masks-epoch1"
    _truncate(newest / "model.safetensors")
    with caplog.at_level(logging.INFO):
        assert _resume(run_copy, "latest", sample_args) == 0
    assert (
        f"--resume_from_checkpoint latest: skipped checkpoint {newest}: model.safetensors is truncated"
        in (caplog.text)
    )
    assert "resumed stage masks after epoch 0" not in caplog.text  # it went back to the detection checkpoint
    assert "resumed stage detection after epoch 2" in caplog.text
    _assert_same_weights(full_run / "final", run_copy / "final")


def test_latest_ignores_a_damaged_older_checkpoint(
    run_copy, full_run, sample_args, caplog, fresh_accelerate_state
):
    """The newest checkpoint is complete: an unreadable older one must not stop the resume."""
    (run_copy / "checkpoints" / "detection-epoch2" / "trainer_state.json").write_text("not json")
    (run_copy / "checkpoints" / "detection-epoch2" / "optimizer.bin").unlink()
    with caplog.at_level(logging.INFO):
        assert _resume(run_copy, "latest", sample_args) == 0
    assert "skipped" not in caplog.text
    assert "resumed stage masks after epoch 1" in caplog.text
    _assert_same_weights(full_run / "final", run_copy / "final")


def test_latest_without_a_complete_checkpoint_names_each_damage(
    run_copy, sample_args, caplog, fresh_accelerate_state
):
    for name in ("detection-epoch2", "masks-epoch1"):
        (run_copy / "checkpoints" / name / "scheduler.bin").unlink()
    before = _snapshot(run_copy)
    assert _resume(run_copy, "latest", sample_args) == 1
    [error] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "CheckpointError: --resume_from_checkpoint latest: no complete checkpoint in" in error
    assert (
        "masks-epoch1: scheduler.bin is missing" in error
        and "detection-epoch2: scheduler.bin is missing" in error
    )
    assert "\n" not in error
    assert _snapshot(run_copy) == before


def test_non_finite_loss_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path, sample_args):
    out = tmp_path / "nan"
    result = run_training(
        accelerate_cmd(out, *SHAPE, *sample_args, "--stages", "detection", script=FAULTY_TRAIN),
        env=train_env(**{NAN_AT_STEP_ENV: "3"}),
    )
    assert result.returncode == 1
    assert "non-finite training loss in stage 'detection', epoch 2, step 3" in result.stderr
    assert (
        "Traceback" not in result.stderr
    )  # accelerate launch -q: the one-line error is the end of the output
    assert (out / "checkpoints" / "detection-epoch1" / "trainer_state.json").is_file()
    assert not (out / "checkpoints" / "detection-epoch2").exists()
    assert not (out / "final").exists()
    # The kept checkpoint holds finite weights.
    weights = load_file(str(out / "checkpoints" / "detection-epoch1" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
