"""Every shell command of README.md's walkthrough runs, as written, on the bundled sample.

The commands are read from the README itself (the ``bash`` blocks of the "Walkthrough" section), so
the README cannot go stale: a renamed flag, script or console command fails here. Only the training
config is swapped for the tiny CI one (`finetune/configs/ci.yaml`: 8 images, 1 epoch per stage),
because the README's `default.yaml` starts from `facebook/detr-resnet-50-panoptic` on the Hub. The
commands run one after the other in a scratch folder that holds links to the repo's files, with the
virtualenv's `bin` first on PATH (as after `source .venv/bin/activate`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_SETTINGS = {"finetune/configs/default.yaml": "finetune/configs/ci.yaml"}
LINKED = ("sample_data", "finetune", "pretrained", "push_to_hub.py")

pytestmark = pytest.mark.slow


def walkthrough_commands(readme: str) -> list[str]:
    """The shell commands of the README's walkthrough: continuation lines joined, comments dropped."""
    section = readme.split("\n## Walkthrough", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def test_the_walkthrough_has_the_steps_a_user_needs():
    commands = walkthrough_commands((REPO / "README.md").read_text(encoding="utf-8"))
    programs = [shlex.split(c)[0] for c in commands]
    assert programs == ["cvat-to-panoptic", "build-panoptic-dataset", "accelerate", "python", "python", "python"]


def test_every_walkthrough_command_runs_on_the_bundled_sample(tmp_path):
    for name in LINKED:
        if (REPO / name).exists():
            (tmp_path / name).symlink_to(REPO / name)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    for command in walkthrough_commands((REPO / "README.md").read_text(encoding="utf-8")):
        for original, tiny in TINY_SETTINGS.items():
            command = command.replace(original, tiny)
        run = subprocess.run(
            shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert run.returncode == 0, f"{command}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"

    # What the walkthrough promises is there: the dataset, the model, predictions and the upload folder.
    assert (tmp_path / "data/site_panoptic/annotations/panoptic_val.json").is_file()
    assert (tmp_path / "data/site_hf/dataset_dict.json").is_file()
    results = json.loads((tmp_path / "outputs/site_run/final/all_results.json").read_text())
    assert 0.0 <= results["pq"] <= 1.0
    assert any((tmp_path / "outputs/site_predictions").rglob("*.png"))
    assert {"README.md", "model.safetensors", "config.json"} <= {
        p.name for p in (tmp_path / "outputs/upload").iterdir()
    }
