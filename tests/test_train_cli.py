"""The command line of `finetune/train.py`: help text for every option, common aliases, dashes, a fast --help."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from finetune.config import TrainingConfig, parse_config
from finetune.config_cli import field_help
from tests.train_runs import REPO_ROOT, TRAIN, train_env


def test_every_config_field_has_help_text():
    config = TrainingConfig()
    missing = [
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(config)
        for f in dataclasses.fields(type(getattr(config, section.name)))
        if not field_help(type(getattr(config, section.name)), f)
    ]
    assert missing == []


def test_help_shows_descriptions_and_real_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in text
    assert "default: facebook/detr-resnet-50-panoptic" in text  # model.model_name_or_path's real default
    assert "Epochs of this stage. [detection.epochs; default: 50]" in " ".join(text.split())
    assert "--save_every_epochs" in text and "--model VALUE" in text


@pytest.mark.parametrize(
    ("argv", "key", "expected"),
    [
        (["--model", "user/detr"], ("model", "model_name_or_path"), "user/detr"),
        (["--model-name-or-path", "user/detr"], ("model", "model_name_or_path"), "user/detr"),
        (["--dataset", "data/panoptic"], ("data", "dataset_dir"), "data/panoptic"),
        (["--dataset-dir", "data/panoptic"], ("data", "dataset_dir"), "data/panoptic"),
        (["--output-dir", "out/run"], ("run", "output_dir"), "out/run"),
        (["--detection-epochs", "3"], ("detection", "epochs"), 3),
        (["--save-every-epochs", "5"], ("run", "save_every_epochs"), 5),
        (["--overwrite-output-dir"], ("run", "overwrite_output_dir"), True),
    ],
)
def test_common_names_and_dashes_are_aliases(argv, key, expected):
    config = parse_config(argv)
    assert getattr(getattr(config, key[0]), key[1]) == expected


def test_help_does_not_import_torch():
    """`train.py --help` parses before the heavy imports (torch, accelerate, datasets)."""
    code = (
        "import sys, runpy\n"
        f"sys.argv = [{str(TRAIN)!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(TRAIN)!r}, run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "heavy = sorted(m for m in ('torch', 'accelerate', 'datasets') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=train_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "--output_dir" in done.stdout
    assert "HEAVY []" in done.stdout
