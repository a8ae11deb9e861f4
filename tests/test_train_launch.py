"""Launching `finetune/train.py` with bad input: one-line error, non-zero exit, nothing written.

Through the real `accelerate launch -q` (the launch command the README and `make train-quickstart` use),
whose quiet mode must keep accelerate's own `CalledProcessError` traceback out of the output.
"""

from __future__ import annotations

import json
import logging

import pytest

from finetune import train
from tests.train_runs import CI_CONFIG, accelerate_cmd, run_training

BOGUS = json.dumps({"bogus_detr_field": 3, "d_modle": 64})
EXPECTED = (
    "configuration error: model.config_overrides: unknown DetrConfig field(s) "
    "'bogus_detr_field' (close matches: none); 'd_modle' (close matches: d_model"
)


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
