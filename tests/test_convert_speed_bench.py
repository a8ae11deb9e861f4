"""bench/convert_speed.py: its protocol (fresh subprocess per run, warm-up excluded, alternating order).

No timing is asserted (speed figures live in the bench's output, not in tests).
"""

from __future__ import annotations

import re

import pytest

from bench import convert_speed
from dataset_scripts.cvat.coco import read_coco_export

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_synthetic_export_is_a_cvat_coco_export_with_brush_masks(tmp_path):
    export = convert_speed.write_synthetic_export(tmp_path / "e", 3, (64, 48), seed=0)
    (read,) = read_coco_export(export)
    assert len(read.images) == 3
    for image in read.images:
        kinds = [s.kind for s in image.shapes]
        assert kinds[:2] == ["polygon", "polygon"] and kinds[-1] == "rle" and image.shapes[-1].iscrowd
        assert 3 + 3 <= len(kinds) <= 8 + 3 and image.resolve() is not None


def test_runs_alternate_and_warm_up_rounds_are_not_kept(tmp_path, monkeypatch):
    calls = []

    def fake_run(export, out, workers, warm_export):
        calls.append(workers)
        return float(len(calls))  # the n-th run "takes" n seconds

    monkeypatch.setattr(convert_speed, "run_in_subprocess", fake_run)
    seconds = convert_speed.measure(tmp_path, tmp_path / "e", tmp_path / "w", workers=3, repeats=3, warmup=1)
    assert calls == [1, 3, 3, 1, 1, 3, 3, 1]
    assert seconds == {1: [4.0, 5.0, 8.0], 3: [3.0, 6.0, 7.0]}


def test_bench_end_to_end_in_subprocesses(capsys):
    argv = ["--num-images", "3", "--size", "64x48", "--workers", "2", "--repeats", "1", "--warmup", "0"]
    assert convert_speed.main(argv) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+([12])\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(float(v) > 0 for r in rows for v in r[1:])
    assert re.search(r"speed-up with 2 workers: best-of-1 [\d.]+x, per round median", out)
