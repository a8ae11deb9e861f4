"""`metrics.jsonl`: records appended, and cut back to the resumed step even after a crash mid-line."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

from finetune.training.metrics_log import MetricsLogger


def _accelerator(is_main_process: bool = True) -> SimpleNamespace:
    """The part of `accelerate.Accelerator` the logger uses (no trackers: nothing forwarded)."""
    return SimpleNamespace(is_main_process=is_main_process, trackers=[], log=None)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write_log(path: Path, steps: list[int], tail: str = "") -> None:
    lines = [json.dumps({"type": "train", "stage": "detection", "step": s, "loss": 1.0 / s}) for s in steps]
    path.write_text("".join(line + "\n" for line in lines) + tail, encoding="utf-8")


def test_log_appends_one_parseable_record_per_line(tmp_path):
    metrics = MetricsLogger(_accelerator(), tmp_path / "run" / "metrics.jsonl")
    metrics.log({"type": "train", "stage": "detection", "step": 1, "loss": float("nan")})
    metrics.log({"type": "eval", "stage": "masks", "step": 2, "pq": 0.5, "per_class_pq": {"wall": 0.25}})
    records = _records(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] == "nan"  # JSON has no NaN: kept as text
    assert records[1]["per_class_pq"] == {"wall": 0.25}


def test_truncate_after_drops_later_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_log(path, [5, 10, 15, 20])
    MetricsLogger(_accelerator(), path).truncate_after(10)
    assert [r["step"] for r in _records(path)] == [5, 10]


def test_truncate_after_survives_a_line_cut_off_by_a_crash(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    _write_log(path, [5, 10, 15], tail='{"type": "train", "stage": "detection", "st')
    metrics = MetricsLogger(_accelerator(), path)
    with caplog.at_level(logging.WARNING, logger="finetune.training.metrics_log"):
        metrics.truncate_after(10)
    assert [r["step"] for r in _records(path)] == [5, 10]
    assert f"{path}:4" in caplog.text and "unreadable" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file left

    metrics.log({"type": "train", "stage": "detection", "step": 11, "loss": 0.5})  # the resumed run goes on
    assert [r["step"] for r in _records(path)] == [5, 10, 11]


def test_truncate_after_is_left_to_the_main_process(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_log(path, [5, 10, 15])
    before = path.read_text(encoding="utf-8")
    MetricsLogger(_accelerator(is_main_process=False), path).truncate_after(5)
    assert path.read_text(encoding="utf-8") == before
    MetricsLogger(_accelerator(), tmp_path / "absent.jsonl").truncate_after(5)  # nothing logged yet
    assert not (tmp_path / "absent.jsonl").exists()
