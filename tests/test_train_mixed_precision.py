"""Mixed precision: the launcher's setting reaches the run unless the config sets one; a bf16 run on CPU trains
under autocast to the end and records its precision in `final/train_results.json`."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from finetune import train
from finetune.config import parse_config
from finetune.hub.model_card import build_model_card
from finetune.training import loop
from finetune.training.run import effective_mixed_precision, setup_accelerator
from tests.train_runs import CI_CONFIG, sample_export_args

LAUNCHER_ENV = "ACCELERATE_MIXED_PRECISION"  # what `accelerate launch --mixed_precision X` sets


@pytest.mark.parametrize(
    ("launcher", "config_value", "expected"),
    [(None, None, "no"), ("bf16", None, "bf16"), ("bf16", "no", "no"), ("no", "bf16", "bf16")],
)
def test_the_config_wins_only_when_set(monkeypatch, fresh_accelerate_state, launcher, config_value, expected):
    if launcher is None:
        monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    else:
        monkeypatch.setenv(LAUNCHER_ENV, launcher)
    argv = ["--config", str(CI_CONFIG)] + ([] if config_value is None else ["--mixed_precision", config_value])
    config = parse_config(argv)
    assert config.run.mixed_precision == config_value
    assert setup_accelerator(config).mixed_precision == expected


def test_fp16_on_cpu_is_recorded_as_what_runs(monkeypatch, fresh_accelerate_state):
    """Accelerate turns fp16 off on a CPU (no autocast, no scaler): the run must not claim it trained in fp16."""
    monkeypatch.setenv(LAUNCHER_ENV, "fp16")
    accelerator = setup_accelerator(parse_config(["--config", str(CI_CONFIG)]))
    assert accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu"
    assert effective_mixed_precision(accelerator) == "no"


@pytest.mark.slow
def test_bf16_from_the_launcher_trains_under_autocast_to_the_end(tmp_path, monkeypatch, fresh_accelerate_state):
    monkeypatch.setenv(LAUNCHER_ENV, "bf16")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    forwards = []
    compute = loop.compute_stage_loss

    def recording(model, stage, *args):
        forwards.append((stage, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return compute(model, stage, *args)

    monkeypatch.setattr(loop, "compute_stage_loss", recording)
    out = tmp_path / "run"
    argv = ["--config", str(CI_CONFIG), "--output_dir", str(out), *sample_export_args(tmp_path)]
    assert train.main(argv) == 0
    assert {stage for stage, _, _ in forwards} == {"detection", "masks"}
    assert all(enabled and dtype == torch.bfloat16 for _, enabled, dtype in forwards), forwards
    facts = json.loads((out / "final" / "train_results.json").read_text())
    assert facts["mixed_precision"] == "bf16"
    results = json.loads((out / "final" / "all_results.json").read_text())
    assert 0.0 <= results["pq"] <= 1.0
    config = json.loads((out / "final" / "config.json").read_text())
    training_config = yaml.safe_load((out / "final" / "training_config.yaml").read_text())
    card = build_model_card(config, training_config, results, "me/detr-bf16", train_facts=facts).content
    assert "process(es), mixed precision bf16" in card
