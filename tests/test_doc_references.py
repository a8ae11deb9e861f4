"""The modules that docs and docstrings name exist: every `finetune.x` / `dataset_scripts.x` dotted path is
importable (its tail, if any, an attribute), and no text uses a module name from before the packages were
restructured (`conversion_plan` for `dataset_scripts.conversion.plan`, `cvat_records` for
`dataset_scripts.cvat.records`: a flat `<subpackage>_<module>` name)."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("finetune", "dataset_scripts")
DOTTED = re.compile(r"\b(?:finetune|dataset_scripts)(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
BACKTICKED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(?:\.[A-Za-z_][A-Za-z0-9_.]*)?`")


def texts() -> list[Path]:
    """The docs, the README and every Python file of the packages and benches (docstrings and comments)."""
    files = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    for folder in (*PACKAGES, "bench"):
        files += sorted((REPO_ROOT / folder).rglob("*.py"))
    return files


def resolves(dotted: str) -> bool:
    """True when the longest importable prefix of `dotted` is a module and the rest its attributes."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            target = importlib.import_module(name)
            for attribute in parts[end:]:
                if not hasattr(target, attribute):
                    return False
                target = getattr(target, attribute)
            return True
    return False


def flat_module_names() -> set[str]:
    """`conversion_plan` for `dataset_scripts/conversion/plan.py`: the names modules had before they were
    grouped into subpackages, unless such a name is itself a module today (`dataset_scripts.stuff_model`)."""
    names, current = set(), set()
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            current.add(path.stem)
            if path.parent != REPO_ROOT / package and path.stem != "__init__":
                names.add(f"{path.parent.name}_{path.stem}")
    return names - current


def test_the_finder_reads_both_kinds_of_reference():
    assert DOTTED.findall("see `finetune.training.loop.fit_stage`.") == ["finetune.training.loop.fit_stage"]
    assert resolves("finetune.training.loop.fit_stage") and resolves("dataset_scripts.conversion.plan")
    assert not resolves("finetune.training.loop.no_such_function") and not resolves("finetune.conversion_plan")
    assert {"conversion_plan", "cvat_records"} <= flat_module_names()


@pytest.mark.parametrize("path", texts(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_named_modules_exist(path):
    text = path.read_text(encoding="utf-8")
    unresolved = sorted({name for name in DOTTED.findall(text) if not resolves(name)})
    assert unresolved == [], f"{path}: no such module or attribute"
    old_names = flat_module_names()
    stale = sorted({name for name in BACKTICKED.findall(text) if name in old_names})
    assert stale == [], f"{path}: module names from before the restructure"
