"""The PQ CLI on malformed JSON and on renumbered predictions (issue 11).

Bad input: exit status 2, one error line naming the file, the image and the id, no traceback,
no results file. Predictions numbered differently from the GT (``predict.py`` without
``--gt-json``) are paired by file name, giving the PQ of the correctly numbered predictions.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from finetune.evaluation.panoptic_quality import main
from tests.test_panoptic_quality import _tiny, write_folder


def _run_cli(gt, pred, tmp_path, capsys, caplog) -> tuple[int, str]:
    out = tmp_path / "pq.json"
    argv = ["--gt-json", str(gt[0]), "--gt-folder", str(gt[1]), "--pred-json", str(pred[0])]
    argv += ["--pred-folder", str(pred[1]), "--json-out", str(out), "--workers", "1"]
    status = main(argv)
    captured = capsys.readouterr()
    text = captured.out + captured.err + caplog.text
    assert "Traceback" not in text
    if status != 0:
        assert not out.exists()
    return status, text


def _edit(path, mutate):
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))


def _segment(data, index=0):
    return data["annotations"][0]["segments_info"][index]


BAD_JSON = {
    "null_annotation": (
        "pred",
        lambda d: d["annotations"].append(None),
        r"pred.json: annotations\[1\] is null, expected an object",
    ),
    "null_segment": (
        "pred",
        lambda d: d["annotations"][0]["segments_info"].insert(1, None),
        r"pred.json: image 1: segments_info\[1\] is null, expected an object",
    ),
    "string_category_id": (
        "pred",
        lambda d: _segment(d).update(category_id="1"),
        r'pred.json: image 1: segment 5 has category_id "1" \(a string\), expected an integer',
    ),
    "null_category_id_in_gt": (
        "gt",
        lambda d: _segment(d, 1).update(category_id=None),
        r"gt.json: image 1: segment 9 has category_id null, expected an integer",
    ),
    "string_segment_id": (
        "pred",
        lambda d: _segment(d).update(id="5"),
        r'pred.json: image 1: segments_info\[0\] has id "5", expected an integer',
    ),
    "null_segments_info": (
        "pred",
        lambda d: d["annotations"][0].update(segments_info=None),
        r"pred.json: image 1 has segments_info null, expected a list",
    ),
    "null_image_id": (
        "pred",
        lambda d: d["annotations"][0].update(image_id=None),
        r"pred.json: annotations\[0\] has image_id null",
    ),
    "missing_file_name": (
        "pred",
        lambda d: d["annotations"][0].pop("file_name"),
        r"pred.json: image 1 has file_name null, expected a PNG name",
    ),
    "string_iscrowd": (
        "gt",
        lambda d: _segment(d).update(iscrowd="no"),
        r'gt.json: image 1: segment 5 has iscrowd "no", expected 0 or 1',
    ),
    "string_area": (
        "gt",
        lambda d: _segment(d).update(area="20"),
        r'gt.json: image 1: segment 5 has area "20", expected a number >= 0',
    ),
    "null_image_entry": ("gt", lambda d: d["images"].append(None), r"gt.json: images\[1\] is null"),
    "string_category_in_gt_table": (
        "gt",
        lambda d: d["categories"][0].update(id="1"),
        r'gt.json: categories\[0\] has id "1", expected an integer',
    ),
    "null_category_entry": (
        "gt",
        lambda d: d["categories"].insert(0, None),
        r"gt.json: categories\[0\] is null, expected an object",
    ),
}


@pytest.mark.parametrize("case", list(BAD_JSON))
def test_badly_typed_json_is_one_line_error(tmp_path, capsys, caplog, case):
    side, mutate, message = BAD_JSON[case]
    gt, pred = _tiny(tmp_path)
    _edit((gt if side == "gt" else pred)[0], mutate)
    status, text = _run_cli(gt, pred, tmp_path, capsys, caplog)
    assert status == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert re.search(message, errors[0]), errors[0]


def test_cli_subprocess_prints_no_traceback(tmp_path, repo_root):
    gt, pred = _tiny(tmp_path)
    _edit(pred[0], lambda d: d["annotations"][0]["segments_info"].append(None))
    proc = subprocess.run(
        [sys.executable, "-m", "finetune.evaluation.panoptic_quality", "--gt-json", str(gt[0])]
        + ["--pred-json", str(pred[0]), "--workers", "1"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"ERROR {pred[0]}: image 1: segments_info[2] is null, expected an object with id and category_id"
    ]


def _three_images(tmp_path, pred_ids_of):
    """GT images 10, 11, 12 (different sizes, so a wrong pairing cannot go unnoticed) and
    predictions of the same PNG names under the ids ``pred_ids_of[gt_id]``; image 12's prediction
    misses one segment."""
    gt_images, pred_images = [], []
    for gt_id, (height, width) in zip((10, 11, 12), ((8, 10), (6, 9), (7, 7)), strict=True):
        ids = np.zeros((height, width), dtype=np.int64)
        ids[: height // 2] = 3
        ids[height // 2 :, : width // 2] = 4
        segs = [
            {"id": 3, "category_id": 20, "iscrowd": 0, "area": int((ids == 3).sum())},
            {"id": 4, "category_id": 1, "iscrowd": 0, "area": int((ids == 4).sum())},
        ]
        gt_images.append((gt_id, ids, segs))
        pred = ids.copy()
        if gt_id == 12:
            pred[pred == 4] = 0
        pred_segs = [
            {"id": s["id"], "category_id": s["category_id"]} for s in segs if (pred == s["id"]).any()
        ]
        pred_images.append((gt_id, pred, pred_segs))
    gt = write_folder(tmp_path, "gt", gt_images)
    pred = write_folder(tmp_path, "pred", pred_images)
    _edit(
        pred[0],
        lambda d: (
            [ann.update(image_id=pred_ids_of[ann["image_id"]]) for ann in d["annotations"]]
            + [img.update(id=pred_ids_of[img["id"]]) for img in d["images"]]
        ),
    )
    return gt, pred


@pytest.mark.parametrize(
    "renumbering",
    [
        {10: 1, 11: 2, 12: 3},  # predict.py without --gt-json: 1..N
        {10: 12, 11: 10, 12: 11},  # the same ids, other images
    ],
)
def test_renumbered_predictions_are_matched_by_file_name(tmp_path, capsys, caplog, renumbering):
    gt, pred = _three_images(tmp_path, {10: 10, 11: 11, 12: 12})
    status, _ = _run_cli(gt, pred, tmp_path, capsys, caplog)
    assert status == 0 and "file_name" not in caplog.text
    expected = json.loads((tmp_path / "pq.json").read_text())
    assert 0 < expected["All"]["pq"] < 1  # image 12 misses a segment

    caplog.clear()
    _edit(
        pred[0],
        lambda d: [ann.update(image_id=renumbering[ann["image_id"]]) for ann in d["annotations"]],
    )
    status, text = _run_cli(gt, pred, tmp_path, capsys, caplog)
    assert status == 0, text
    assert "images are matched by file_name" in caplog.text
    assert json.loads((tmp_path / "pq.json").read_text()) == expected


def test_renumbered_predictions_with_repeated_names_are_an_error(tmp_path, capsys, caplog):
    gt, pred = _three_images(tmp_path, {10: 1, 11: 2, 12: 3})
    _edit(pred[0], lambda d: d["annotations"][2].update(file_name=d["annotations"][1]["file_name"]))
    status, _ = _run_cli(gt, pred, tmp_path, capsys, caplog)
    assert status == 2
    assert "image ids differ from those of" in caplog.text and "000010.png: image 10" in caplog.text


def test_size_mismatch_names_both_files(tmp_path, capsys, caplog):
    """Images paired by id whose PNGs differ in size: the message names both PNGs."""
    gt, pred = _three_images(tmp_path, {10: 10, 11: 11, 12: 12})
    shutil.copy(pred[1] / "000010.png", pred[1] / "other.png")  # not a GT name: still paired by id
    _edit(pred[0], lambda d: d["annotations"][1].update(file_name="other.png"))
    status, _ = _run_cli(gt, pred, tmp_path, capsys, caplog)
    assert status == 2
    assert (
        "image 11 (000011.png; prediction image 11, other.png): prediction size (8, 10) differs from "
        "ground truth size (6, 9)"
    ) in caplog.text


def test_table_and_json_are_fractions(tmp_path, capsys):
    """One PQ unit (issue 12): the printed tables and ``--output-json`` are fractions in [0, 1]."""
    gt, pred = _three_images(tmp_path, {10: 10, 11: 11, 12: 12})
    out = tmp_path / "fractions.json"
    argv = ["--gt-json", str(gt[0]), "--gt-folder", str(gt[1]), "--pred-json", str(pred[0])]
    assert main([*argv, "--pred-folder", str(pred[1]), "--output-json", str(out), "--num-workers", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split("|")[0].strip() == "fractions"
    assert any("fractions in [0, 1]" in line for line in printed[1:])  # the per-class table too
    written = json.loads(out.read_text())
    all_row = next(line for line in printed if line.startswith("All"))
    pq, sq, rq = (float(v) for v in all_row.split("|")[1].split()[:3])
    assert 0 < pq < 1 and (pq, sq, rq) == pytest.approx(
        [written["All"][k] for k in ("pq", "sq", "rq")], abs=0.0005
    )
