"""bench/transfer.py and bench/learning.py train through `finetune/train.py`: their arms are valid
configurations of it, and the two transfer arms differ only in the starting weights and learning rates."""

from __future__ import annotations

import dataclasses

from bench import learning, transfer
from finetune.config import parse_config


def test_transfer_arms_share_everything_but_the_start():
    budget = ["--detection_epochs", "3", "--masks_epochs", "2", "--seed", "5"]
    pretrained = parse_config(["--config", str(transfer.QUICKSTART), *budget])
    scratch = parse_config(["--config", str(transfer.QUICKSTART), *budget, *transfer.scratch_args()])
    pretrain_model = parse_config(["--config", str(transfer.PRETRAIN_CONFIG)]).model
    assert pretrained.model.model_name_or_path == "pretrained/tiny-detr-panoptic"
    assert scratch.model.model_name_or_path is None and scratch.model.class_map == {}
    assert scratch.model.config_overrides == pretrain_model.config_overrides  # the checkpoint's architecture
    for section in ("data", "eval", "run", "trainer"):
        assert getattr(scratch, section) == getattr(pretrained, section), section
    for stage in ("detection", "masks"):
        a, b = dataclasses.asdict(pretrained.stage(stage)), dataclasses.asdict(scratch.stage(stage))
        assert {k for k in a if a[k] != b[k]} <= {"lr"}, stage


def test_early_stopping_arm_differs_from_pretrained_only_in_evaluation_and_patience():
    budget = ["--detection_epochs", "3", "--masks_epochs", "2", "--eval_every_epochs", "0"]
    pretrained = parse_config(["--config", str(transfer.QUICKSTART), *budget])
    stopping = parse_config(
        ["--config", str(transfer.QUICKSTART), *budget, *transfer.arm_args("early_stopping", 4)]
    )
    assert stopping.trainer.early_stopping_patience == 4 and stopping.eval.eval_every_epochs == 1
    assert dataclasses.replace(stopping.trainer, early_stopping_patience=0) == pretrained.trainer
    assert dataclasses.replace(stopping.eval, eval_every_epochs=0) == pretrained.eval
    for section in ("model", "data", "run", "detection", "masks"):
        assert getattr(stopping, section) == getattr(pretrained, section), section


def test_ema_arm_differs_from_pretrained_only_in_ema():
    pretrained = parse_config(["--config", str(transfer.QUICKSTART)])
    ema = parse_config(["--config", str(transfer.QUICKSTART), *transfer.arm_args("ema", 3)])
    assert ema.trainer.ema and not pretrained.trainer.ema
    assert dataclasses.replace(ema, trainer=pretrained.trainer) == pretrained


def test_learning_bench_config_is_a_from_scratch_training_config():
    config = parse_config(["--config", str(learning.CONFIG)])
    assert config.model.model_name_or_path is None
    # The random backbone learns, slowly: at 2e-4 it overflows (docs/training-from-scratch.md).
    assert 0.0 < config.detection.backbone_lr <= 2e-5
    assert config.run.stages == ["detection", "masks"]
