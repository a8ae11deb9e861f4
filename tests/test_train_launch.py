"""Launching `finetune/train.py` with bad input: one-line error, non-zero exit, nothing written.

Through the real `accelerate launch -q` (the launch command the README and `make train-quickstart` use),
whose quiet mode must keep accelerate's own `CalledProcessError` traceback out of the output, and through
`python -m finetune.training.launch` for multi-process launches (where `-q` does not hide torch's traceback).
"""

from __future__ import annotations

import json
import logging
import sys

import pytest

from finetune import train
from tests.faulty_train import KILL_AT_STEP_ENV
from tests.train_runs import (
    CI_CONFIG,
    FAULTY_TRAIN,
    TRAIN,
    accelerate_cmd,
    run_training,
    sample_export_args,
    train_env,
)

BOGUS = json.dumps({"bogus_detr_field": 3, "d_modle": 64})
EXPECTED = (
    "configuration error: model.config_overrides: unknown DetrConfig field(s) "
    "'bogus_detr_field' (close matches: none); 'd_modle' (close matches: d_model"
)


@pytest.fixture(scope="module")
def sample_args(tmp_path_factory):
    return sample_export_args(tmp_path_factory.mktemp("sample"))


@pytest.mark.slow
def test_accelerate_launch_quiet_ends_on_the_one_line_error(tmp_path):
    out = tmp_path / "run"
    result = run_training(accelerate_cmd(out, "--config_overrides", BOGUS), timeout=240)
    assert result.returncode == 1  # accelerate -q exits 1 for any failure of the script
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert EXPECTED in lines[-1], lines[-5:]
    assert "Traceback" not in result.stderr and "CalledProcessError" not in result.stderr
    assert not out.exists()


def test_config_overrides_typo_exits_2_before_writing(tmp_path, caplog):
    out = tmp_path / "run"
    argv = ["--config", str(CI_CONFIG), "--output_dir", str(out), "--config_overrides", BOGUS]
    assert train.main(argv) == 2
    [error] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.startswith(EXPECTED) and "\n" not in error
    assert not out.exists()


def _wrapper_cmd(out, *args: str, script=TRAIN) -> list[str]:
    """`python -m finetune.training.launch` with a two-process (torch.distributed.run) launch."""
    launch = accelerate_cmd(out, *args, num_processes=2, script=script)
    assert launch[1:3] == ["launch", "-q"]
    return [sys.executable, "-m", "finetune.training.launch", "--multi_gpu", *launch[3:]]


@pytest.mark.slow
def test_multi_process_launch_wrapper_ends_on_the_one_line_error(tmp_path):
    """`accelerate launch -q` still prints torch's ChildFailedError traceback for two processes; the wrapper not."""
    out = tmp_path / "run"
    result = run_training(_wrapper_cmd(out, "--config_overrides", BOGUS), timeout=240)
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert EXPECTED in lines[-1], lines[-5:]
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_multi_process_launch_wrapper_names_processes_killed_by_a_signal(tmp_path, sample_args):
    out = tmp_path / "run"
    small = ("--max_train_samples", "4", "--max_eval_samples", "2", "--detection_batch_size", "1")
    env = train_env(**{KILL_AT_STEP_ENV: "1"})  # every process is SIGKILLed after the first step
    result = run_training(_wrapper_cmd(out, *small, *sample_args, script=FAULTY_TRAIN), env=env, timeout=300)
    assert result.returncode == 1
    last = (result.stdout + result.stderr).strip().splitlines()[-1]
    assert "training process(es) killed by a signal (rank " in last and "SIGKILL" in last, last
    assert "Traceback" not in result.stderr
