"""The one CLI vocabulary (`dataset_scripts.cli_options`, ``docs/cli.md``) across every script.

Every ``--help`` exits 0 without importing torch & co (in a fresh interpreter), documents every
option, hides the old spellings, and each old spelling parses to the same value as the new one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from dataset_scripts.cli_options import VOCABULARY, add_option, make_parser

# module of the CLI -> how a user starts it (relative to the repository root)
CLIS = {
    "dataset_scripts.cvat_to_panoptic": ["dataset_scripts/cvat_to_panoptic.py"],
    "dataset_scripts.build_dataset": ["dataset_scripts/build_dataset.py"],
    "dataset_scripts.stuff_model": ["dataset_scripts/stuff_model.py"],
    "dataset_scripts.make_sample": ["dataset_scripts/make_sample.py"],
    "finetune.evaluate": ["finetune/evaluate.py"],
    "finetune.predict": ["finetune/predict.py"],
    "finetune.evaluation.pq_folders": ["-m", "finetune.evaluation.panoptic_quality"],
    "demo": ["demo.py"],
    "finetune.export.cli": ["-m", "finetune.export"],
}
HEAVY = ("torch", "transformers", "datasets", "gradio", "accelerate", "timm")

# (module, the arguments every parse needs, old spelling, new spelling, value, dest)
ALIASES = [
    ("dataset_scripts.cvat_to_panoptic", ["--cvat", "x"], "--out", "--output-dir", "o", "output_dir"),
    ("dataset_scripts.build_dataset", ["--output-dir", "o"], "--panoptic", "--dataset", "p", "dataset"),
    ("dataset_scripts.build_dataset", ["--dataset", "p"], "--out", "--output-dir", "o", "output_dir"),
    ("dataset_scripts.make_sample", [], "--out", "--output-dir", "o", "output_dir"),
    ("finetune.evaluate", ["--model", "m", "--dataset", "d"], "--json-out", "--output-json", "r.json", "output_json"),
    ("finetune.predict", ["a.jpg", "--model", "m"], "--out", "--output-dir", "o", "output_dir"),
    (
        "finetune.evaluation.pq_folders",
        ["--gt-json", "g.json", "--pred-json", "p.json"],
        "--json-out",
        "--output-json",
        "r.json",
        "output_json",
    ),
    (
        "finetune.evaluation.pq_folders",
        ["--gt-json", "g.json", "--pred-json", "p.json"],
        "--workers",
        "--num-workers",
        "3",
        "num_workers",
    ),
]


def _parser(module: str) -> argparse.ArgumentParser:
    return importlib.import_module(module).build_parser()


@pytest.mark.parametrize("module", sorted(CLIS))
def test_help_exits_zero_without_heavy_imports(module, repo_root):
    """``--help`` in a fresh interpreter: exit 0, and none of torch/transformers/datasets/gradio loaded."""
    command = CLIS[module]
    probe = (
        "import json, runpy, sys\n"
        f"sys.argv = [{command[-1]!r}, '--help']\n"
        "try:\n"
        f"    runpy.{'run_module' if command[0] == '-m' else 'run_path'}({command[-1]!r}, run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    code = stop.code\n"
        f"print(json.dumps([code, sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=repo_root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    *help_lines, last = proc.stdout.strip().splitlines()
    code, heavy = json.loads(last)
    assert code == 0 and heavy == [], (code, heavy)
    assert "usage:" in "\n".join(help_lines)


@pytest.mark.parametrize("module", sorted(CLIS))
def test_every_option_has_help_and_old_spellings_are_hidden(module):
    parser = _parser(module)
    text = parser.format_help()
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, (module, action.option_strings)
        for alias in getattr(action, "hidden_aliases", ()):
            assert f"{alias} " not in text and f"{alias}\n" not in text, (module, alias)


@pytest.mark.parametrize(("module", "base", "old", "new", "value", "dest"), ALIASES)
def test_old_and_new_spelling_parse_alike(module, base, old, new, value, dest):
    parser = _parser(module)
    via_new = vars(parser.parse_args([*base, new, value]))
    via_old = vars(parser.parse_args([*base, old, value]))
    assert via_new == via_old
    assert str(via_new[dest]) == value


@pytest.mark.parametrize("module", sorted(CLIS))
def test_shared_concepts_use_the_vocabulary_flags(module):
    """A shared concept (dest) is always spelled by its vocabulary flag."""
    for action in _parser(module)._actions:
        if action.dest in VOCABULARY and action.option_strings:
            assert action.option_strings[0] == VOCABULARY[action.dest][0], (module, action.option_strings)


def test_missing_required_option_names_the_new_flag_only(capsys):
    parser = make_parser("demo")
    add_option(parser, "output_dir", aliases=("--out",), required=True, help="output folder")
    with pytest.raises(SystemExit) as stop:
        parser.parse_args([])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "required: --output-dir" in err and "--out" not in err.replace("--output-dir", "")


def test_an_option_without_help_is_refused():
    with pytest.raises(ValueError, match="help"):
        add_option(make_parser("demo"), "seed", type=int)
