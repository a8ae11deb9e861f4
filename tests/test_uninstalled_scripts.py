"""Every command-line script run as a file without the project installed: one line, exit 2, no traceback.

Two states of a Python a new user can have:
- nothing installed (`python -E -s -S`: the standard library alone);
- the dependencies but not the project (`pip install -r requirements.txt` alone): this virtualenv's
  site-packages on `PYTHONPATH` under `-S`, so that the editable install's import hook (a `.pth` file)
  is not run and `finetune` / `dataset_scripts` cannot be imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest

# scripts in a package folder: run as a file, that folder (not the repository root) is sys.path[0]
PACKAGE_SCRIPTS = [
    "finetune/train.py",
    "finetune/evaluate.py",
    "finetune/predict.py",
    "finetune/make_tiny_checkpoint.py",
    "dataset_scripts/cvat_to_panoptic.py",
    "dataset_scripts/build_dataset.py",
    "dataset_scripts/stuff_model.py",
    "dataset_scripts/make_sample.py",
]
# scripts at the repository root, which is then sys.path[0]: they only need the dependencies
ROOT_SCRIPTS = ["push_to_hub.py", "demo.py"]


def _run(repo_root, tmp_path, script: str, *python_flags: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, *python_flags, str(repo_root / script), "--help"],
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_one_line_install_hint(result, missing: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert f"No module named '{missing}'" in line and "pip install -e " in line, line
    assert "from the repository root" in line, line


@pytest.mark.parametrize("script", PACKAGE_SCRIPTS + ROOT_SCRIPTS)
def test_nothing_installed(script, repo_root, tmp_path):
    result = _run(repo_root, tmp_path, script, "-E", "-s", "-S")
    missing = script.split("/")[0] if script in PACKAGE_SCRIPTS else "PIL" if script == "demo.py" else "huggingface_hub"
    _assert_one_line_install_hint(result, missing)


@pytest.mark.parametrize("script", PACKAGE_SCRIPTS)
def test_dependencies_without_the_project(script, repo_root, tmp_path):
    site_packages = os.pathsep.join({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    result = _run(repo_root, tmp_path, script, "-S", env={"PYTHONPATH": site_packages})
    _assert_one_line_install_hint(result, script.split("/")[0])


@pytest.mark.parametrize("script", ROOT_SCRIPTS)
def test_root_scripts_need_only_the_dependencies(script, repo_root, tmp_path):
    site_packages = os.pathsep.join({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    result = _run(repo_root, tmp_path, script, "-S", env={"PYTHONPATH": site_packages})
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
