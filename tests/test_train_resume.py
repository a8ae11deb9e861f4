"""Checkpoints: a SIGKILLed run resumed with `--resume_from_checkpoint latest` ends with the weights of an
uninterrupted run; a non-finite loss stops the run with a clear error and keeps the last good checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.train_runs import (
    REPO_ROOT,
    accelerate_cmd,
    read_jsonl,
    run_training,
    sample_export_args,
    train_env,
)

pytestmark = pytest.mark.slow

# 2 detection epochs (2 steps each) + 1 masks epoch: the kill lands after the first checkpoint.
SHAPE = ("--detection_epochs", "2", "--masks_epochs", "1", "--save_total_limit", "2")


@pytest.fixture(scope="module")
def sample_args(tmp_path_factory):
    return sample_export_args(tmp_path_factory.mktemp("sample"))


def _kill_after_first_checkpoint(cmd: list[str], marker, timeout: float = 240) -> None:
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=train_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while not marker.is_file():
            if proc.poll() is not None:
                raise AssertionError(
                    f"run ended (rc {proc.returncode}) before {marker}:\n{proc.stderr.read()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no checkpoint after {timeout} s")
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole `accelerate launch` group, like an OOM kill
        proc.wait()
        proc.stderr.close()


def test_killed_run_resumes_to_identical_weights(tmp_path, sample_args):
    full, killed = tmp_path / "full", tmp_path / "killed"

    done = run_training(accelerate_cmd(full, *SHAPE, *sample_args))
    assert done.returncode == 0, done.stderr[-3000:]

    _kill_after_first_checkpoint(
        accelerate_cmd(killed, *SHAPE, *sample_args),
        killed / "checkpoints" / "detection-epoch1" / "trainer_state.json",
    )
    assert not (killed / "final").exists()
    state = json.loads((killed / "checkpoints" / "detection-epoch1" / "trainer_state.json").read_text())
    assert state["stage"] == "detection" and state["epoch"] == 1 and state["global_step"] == 2

    resumed = run_training(accelerate_cmd(killed, *SHAPE, *sample_args, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed stage detection after epoch 1" in resumed.stderr

    expected = load_file(str(full / "final" / "model.safetensors"))
    got = load_file(str(killed / "final" / "model.safetensors"))
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)

    # The resumed run's log has each step once, as the uninterrupted one.
    steps = [(r["type"], r["stage"], r["step"]) for r in read_jsonl(killed / "metrics.jsonl")]
    assert steps == [(r["type"], r["stage"], r["step"]) for r in read_jsonl(full / "metrics.jsonl")]
    # save_total_limit 2: the oldest of the three epoch checkpoints is gone.
    names = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert names == ["detection-epoch2", "masks-epoch1"]


def test_non_finite_loss_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path, sample_args):
    out = tmp_path / "nan"
    result = run_training(
        accelerate_cmd(out, *SHAPE, *sample_args, "--debug_nan_loss_at_step", "3", "--stages", "detection")
    )
    assert result.returncode == 1
    assert "non-finite training loss in stage 'detection', epoch 2, step 3" in result.stderr
    assert (out / "checkpoints" / "detection-epoch1" / "trainer_state.json").is_file()
    assert not (out / "checkpoints" / "detection-epoch2").exists()
    assert not (out / "final").exists()
    # The kept checkpoint holds finite weights.
    weights = load_file(str(out / "checkpoints" / "detection-epoch1" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
