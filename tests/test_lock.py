"""The lock (`requirements-lock.txt`, `make lock`) agrees with the ranges, and `.ci/check_lock.py` compares.

The ranges (`requirements*.txt`, read by `pyproject.toml`) are for people who install the package into
their own environment; the lock is what `make install` and CI install. A range edited without `make lock`
fails here.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK = REPO_ROOT / "requirements-lock.txt"
RANGES = ["requirements.txt", "requirements-dev.txt", "requirements-demo.txt", "requirements-export.txt"]
CHECK = REPO_ROOT / ".ci" / "check_lock.py"


def _entries(text: str) -> list[tuple[Requirement, list[str]]]:
    """The lock's entries with their hashes (continuation lines joined, comments dropped)."""
    entries = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement, *hashes = line.split(" --hash=")
            entries.append((Requirement(requirement), [h.strip() for h in hashes]))
    return entries


def test_every_entry_is_pinned_and_hashed():
    entries = _entries(LOCK.read_text(encoding="utf-8"))
    assert len(entries) > 100  # transitive dependencies included
    for requirement, hashes in entries:
        [specifier] = requirement.specifier
        assert specifier.operator == "==", requirement
        assert hashes and all(h.startswith("sha256:") for h in hashes), requirement


@pytest.mark.parametrize("ranges", RANGES)
def test_every_range_is_locked_within_its_range(ranges):
    locked: dict[str, list[str]] = {}
    for requirement, _ in _entries(LOCK.read_text(encoding="utf-8")):
        locked.setdefault(canonicalize_name(requirement.name), []).append(str(*requirement.specifier)[2:])
    for line in (REPO_ROOT / ranges).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        wanted = Requirement(line)
        versions = locked.get(canonicalize_name(wanted.name))
        assert versions, f"{ranges}: {wanted.name} is not in {LOCK.name}: run `make lock`"
        assert all(wanted.specifier.contains(v, prereleases=True) for v in versions), (wanted, versions)


def _check(tmp_path, lock_text: str, *flags: str) -> subprocess.CompletedProcess:
    lock = tmp_path / "lock.txt"
    lock.write_text(lock_text, encoding="utf-8")
    return subprocess.run([sys.executable, str(CHECK), *flags, str(lock)], capture_output=True, text=True)


def test_check_lock_compares_versions_and_skips_other_platforms(tmp_path):
    pytest_pin = f"pytest=={version('pytest')} \\\n    --hash=sha256:00\n"
    elsewhere = "colorama==0.0.1 ; sys_platform == 'no-such-platform' \\\n    --hash=sha256:00\n"
    agreeing = _check(tmp_path, pytest_pin + elsewhere)
    assert agreeing.returncode == 0, agreeing.stderr
    assert agreeing.stdout.startswith("1 packages, exactly as locked")
    assert "installed but not locked" in agreeing.stderr  # this venv holds more than pytest: a warning

    strict = _check(tmp_path, pytest_pin, "--strict")
    assert strict.returncode == 1 and "installed but not locked" in strict.stderr

    wrong = _check(tmp_path, "pytest==0.0.1 \\\n    --hash=sha256:00\nno-such-dist==1.0\n")
    assert wrong.returncode == 1
    assert "pytest" in wrong.stderr and "(locked 0.0.1)" in wrong.stderr and "no-such-dist missing" in wrong.stderr
