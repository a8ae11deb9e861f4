"""Checkpoint cadence: by default a checkpoint after each evaluation and at the end of each stage
(`save_every_epochs` null), or every N epochs; a run killed between two sparse checkpoints resumes from the
last one to exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from finetune.training.loop import should_save
from tests.faulty_train import KILL_AT_STEP_ENV
from tests.train_runs import (
    FAULTY_TRAIN,
    accelerate_cmd,
    read_jsonl,
    run_training,
    sample_export_args,
    train_env,
)


@pytest.mark.parametrize(
    ("save_every", "eval_every", "epochs", "saved"),
    [
        (None, 2, 5, [2, 4, 5]),  # default: at each evaluation (and the last epoch, always evaluated)
        (None, 0, 5, [5]),  # evaluation only at the end: one checkpoint per stage
        (None, 1, 3, [1, 2, 3]),
        (2, 0, 5, [2, 4, 5]),  # every 2 epochs, plus the last
        (1, 3, 3, [1, 2, 3]),
        (0, 1, 4, [4]),  # 0: at the end of the stage only
    ],
)
def test_should_save(save_every, eval_every, epochs, saved):
    evaluated = [epoch + 1 == epochs or (eval_every > 0 and (epoch + 1) % eval_every == 0) for epoch in range(epochs)]
    got = [epoch + 1 for epoch in range(epochs) if should_save(epoch, epochs, save_every, evaluated[epoch])]
    assert got == saved


# ci.yaml: 8 images, batch 4 = 2 steps per epoch. 3 detection epochs evaluated after epoch 2 and 3, 1 masks epoch.
SHAPE = ("--detection_epochs", "3", "--masks_epochs", "1", "--eval_every_epochs", "2", "--save_total_limit", "5")


@pytest.fixture(scope="module")
def sample_args(tmp_path_factory):
    return sample_export_args(tmp_path_factory.mktemp("sample"))


@pytest.mark.slow
def test_default_cadence_and_exact_resume_between_sparse_checkpoints(tmp_path, sample_args):
    full = tmp_path / "full"
    done = run_training(accelerate_cmd(full, *SHAPE, *sample_args))
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(p.name for p in (full / "checkpoints").iterdir())
    assert names == ["detection-epoch2", "detection-epoch3", "masks-epoch1"]  # no detection-epoch1
    modes = {p.name: p.stat().st_mode & 0o777 for p in (full / "checkpoints" / names[0]).iterdir()}
    assert len(set(modes.values())) == 1, modes  # model.safetensors like the rest (safetensors writes 0600)

    killed = tmp_path / "killed"
    # Killed after step 5: mid detection epoch 3; the newest checkpoint is detection-epoch2 (step 4).
    run = run_training(
        accelerate_cmd(killed, *SHAPE, *sample_args, script=FAULTY_TRAIN), env=train_env(**{KILL_AT_STEP_ENV: "5"})
    )
    assert run.returncode != 0
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["detection-epoch2"]
    resumed = run_training(accelerate_cmd(killed, *SHAPE, *sample_args, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed stage detection after epoch 2" in resumed.stderr

    expected = load_file(str(full / "final" / "model.safetensors"))
    got = load_file(str(killed / "final" / "model.safetensors"))
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)
    steps = [r["step"] for r in read_jsonl(killed / "metrics.jsonl") if r["type"] == "train"]
    assert steps == [r["step"] for r in read_jsonl(full / "metrics.jsonl") if r["type"] == "train"]


@pytest.mark.slow
def test_stage_end_checkpoints_still_write_the_best_evaluated_weights(tmp_path, sample_args):
    """`--save_every_epochs 0`: one checkpoint per stage; best_detection/ is the best evaluation's model,
    written with the stage-end checkpoint even when that evaluation was at an earlier epoch."""
    out = tmp_path / "run"
    done = run_training(accelerate_cmd(out, "--detection_epochs", "2", "--masks_epochs", "1", "--save_every_epochs", "0", *sample_args))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["detection-epoch2", "masks-epoch1"]
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "eval" and r["stage"] == "detection"]
    assert len(evals) == 2  # ci.yaml evaluates every epoch
    best = json.loads((out / "best_detection" / "all_results.json").read_text())
    first_best = max(evals, key=lambda r: (r["box_map"], -r["epoch"]))  # the first of equal values is kept
    assert best["box_map"] == first_best["box_map"]
    assert (out / "best_masks" / "model.safetensors").is_file()
