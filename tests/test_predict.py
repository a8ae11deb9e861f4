"""Tests of `finetune/predict.py`: outputs per image, corrupt files skipped, PQ-scorable JSON."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_scripts.panoptic_format import read_panoptic_png, write_panoptic_png
from finetune import predict
from tests.tiny_checkpoints import EXCAVATOR, LABELS, STUFF, WALL, handmade_outputs, save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "final")


@pytest.fixture
def handmade(monkeypatch):
    """Every DetrForSegmentation returns the hand-made wall/excavator outputs of test_inference."""
    from transformers import DetrForSegmentation

    def forward(self, pixel_values, pixel_mask=None, **_):
        return handmade_outputs(pixel_values, pixel_mask, self.config.num_queries, self.config.num_labels)

    monkeypatch.setattr(DetrForSegmentation, "forward", forward)
    # The hand-made outputs replace the full forward, which the predictor then has to run.
    from finetune.inference import PanopticPredictor

    real_init = PanopticPredictor.__init__

    def full_forward_init(self, *args, **kwargs):
        real_init(self, *args, **{**kwargs, "full_forward": True})

    monkeypatch.setattr(PanopticPredictor, "__init__", full_forward_init)


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (96, 64), (120, 120, 120)).save(folder / "a.jpg")
    Image.new("RGB", (64, 96), (90, 90, 90)).save(folder / "sub" / "b.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_outputs_for_every_readable_image_and_corrupt_ones_skipped(
    checkpoint, images, tmp_path, handmade, caplog
):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        rc = predict.main(
            [str(images), "--model", str(checkpoint), "--output-dir", str(out), "--batch-size", "2", "--quiet"]
        )
    assert rc == 0
    assert "broken.jpg" in caplog.text  # reported by name
    # where the results are (issue 12): the JSON and the overlays
    assert f"predictions (COCO-panoptic JSON): {out / 'panoptic_predictions.json'}" in caplog.text
    assert f"overlays (PNG, one per image): {out / 'overlays'}" in caplog.text
    data = json.loads((out / "panoptic_predictions.json").read_text())
    assert [img["file_name"] for img in data["images"]] == ["a.jpg", "b.png"]
    assert {c["name"]: (c["id"], c["isthing"]) for c in data["categories"]} == {
        name: (i + 1, int(i not in STUFF)) for i, name in enumerate(LABELS)
    }
    for img, ann in zip(data["images"], data["annotations"], strict=True):
        ids = read_panoptic_png(out / "panoptic_predictions" / ann["file_name"])
        assert ids.shape == (img["height"], img["width"])
        assert {s["id"] for s in ann["segments_info"]} == set(np.unique(ids).tolist()) - {0}
        cats = sorted(s["category_id"] for s in ann["segments_info"])
        assert cats == [EXCAVATOR + 1, EXCAVATOR + 1, WALL + 1]  # wall fused into one segment
        overlay = Image.open(out / "overlays" / ann["file_name"])
        assert overlay.width == img["width"] and overlay.height > img["height"]  # legend strip
    assert not list(out.rglob(".*tmp*"))  # no temporary leftovers


def test_nothing_readable_exits_non_zero(checkpoint, tmp_path, handmade):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    out = tmp_path / "out"
    assert predict.main([str(bad), "--model", str(checkpoint), "--out", str(out), "--quiet"]) == 1
    assert not (out / "panoptic_predictions.json").exists()
    assert predict.main([str(tmp_path / "nothing-*.jpg"), "--model", str(checkpoint), "--out", str(out)]) == 1


def test_globs_and_duplicate_stems(tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "same.jpg")
    paths, problems = predict.collect_images([str(tmp_path / "*" / "*.jpg"), str(tmp_path / "x")])
    assert len(paths) == 2 and not problems  # the folder repeats a globbed file: kept once
    assert predict.output_stems(paths) == ["same", "same-2"]


@pytest.mark.parametrize(
    "names",
    [
        ["x/a.jpg", "y/a.jpg", "a-2.jpg"],  # issue 11: the suffixed name is another input's stem
        ["a-2.jpg", "x/a.jpg", "y/a.jpg"],
        ["x/a.jpg", "y/a.jpg", "z/a.jpg", "a-2.jpg", "a-3.png", "A.png"],  # case-insensitive file systems
    ],
)
def test_output_names_are_always_unique(names, tmp_path, checkpoint, handmade):
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 24)).save(tmp_path / name)
    paths = [tmp_path / name for name in names]
    stems = predict.output_stems(paths)
    assert len({stem.casefold() for stem in stems}) == len(names)
    out = tmp_path / "out"
    assert predict.main([*map(str, paths), "--model", str(checkpoint), "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "panoptic_predictions.json").read_text())
    written = [ann["file_name"] for ann in data["annotations"]]
    assert len(set(written)) == len(names)
    assert sorted(p.name for p in (out / "panoptic_predictions").iterdir()) == sorted(written)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(written)


def test_predictions_score_pq_1_against_matching_ground_truth(checkpoint, images, tmp_path, handmade):
    """The JSON + PNGs are what finetune.evaluation.panoptic_quality reads; ids come from --gt-json."""
    from finetune.evaluation.panoptic_quality import evaluate_folders

    gt_dir = tmp_path / "gt"
    ids = np.zeros((64, 96), dtype=np.int64)
    ids[:32] = 5  # wall
    ids[32:, :48] = 6
    ids[32:, 48:] = 7
    write_panoptic_png(gt_dir / "panoptic_val" / "a.png", ids)
    categories = [
        {"id": 11, "name": "excavator", "isthing": 1},
        {"id": 12, "name": "person", "isthing": 1},
        {"id": 20, "name": "wall", "isthing": 0},
        {"id": 21, "name": "sky", "isthing": 0},
    ]
    segs = [
        {"id": 5, "category_id": 20, "iscrowd": 0, "area": 96 * 32},
        {"id": 6, "category_id": 11, "iscrowd": 0, "area": 48 * 32},
        {"id": 7, "category_id": 11, "iscrowd": 0, "area": 48 * 32},
    ]
    gt_json = gt_dir / "panoptic_val.json"
    gt_json.write_text(
        json.dumps(
            {
                "images": [{"id": 42, "file_name": "a.jpg", "width": 96, "height": 64}],
                "annotations": [{"image_id": 42, "file_name": "a.png", "segments_info": segs}],
                "categories": categories,
            }
        )
    )
    out = tmp_path / "out"
    argv = [str(images / "a.jpg"), "--model", str(checkpoint), "--out", str(out), "--gt-json", str(gt_json)]
    assert predict.main([*argv, "--no-overlays", "--quiet"]) == 0
    assert not (out / "overlays").exists()
    results, _, _ = evaluate_folders(gt_json, out / "panoptic_predictions.json", workers=1)
    assert results["All"]["pq"] == pytest.approx(1.0)
    assert results["Stuff"]["pq"] == pytest.approx(1.0)  # one fused wall segment matches the GT wall


def test_same_file_name_in_two_folders_with_gt_json_is_an_error(checkpoint, tmp_path, handmade, caplog):
    """--gt-json matches images by file name: two inputs named a.jpg would share one image id."""
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (16, 16)).save(tmp_path / folder / "a.jpg")
    Image.new("RGB", (16, 16)).save(tmp_path / "x" / "b.jpg")
    gt_json = tmp_path / "gt.json"
    images = [{"id": 1, "file_name": "a.jpg", "width": 16, "height": 16}]
    categories = [
        {"id": i + 1, "name": name, "isthing": int(i not in STUFF)} for i, name in enumerate(LABELS)
    ]
    gt_json.write_text(json.dumps({"images": images, "annotations": [], "categories": categories}))
    out = tmp_path / "out"
    argv = [
        str(tmp_path / "x"),
        str(tmp_path / "y"),
        "--model",
        str(checkpoint),
        "--out",
        str(out),
        "--quiet",
    ]
    assert predict.main([*argv, "--gt-json", str(gt_json)]) == 2
    assert f"{tmp_path / 'x' / 'a.jpg'} and {tmp_path / 'y' / 'a.jpg'} are both named 'a.jpg'" in caplog.text
    assert not out.exists()  # refused before writing anything
    assert predict.main(argv) == 0  # without --gt-json the images are numbered: no clash


def test_gt_json_with_other_category_names_is_refused(checkpoint, images, tmp_path, handmade, caplog):
    gt_json = tmp_path / "gt.json"
    categories = [{"id": i + 1, "name": f"other{i}", "isthing": 1} for i in range(len(LABELS))]
    gt_json.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    argv = [str(images / "a.jpg"), "--model", str(checkpoint), "--out", str(tmp_path / "out")]
    assert predict.main([*argv, "--gt-json", str(gt_json), "--quiet"]) == 2
    assert "model label(s) 0 'excavator'" in caplog.text


def test_runs_as_a_file(repo_root):
    """The entry script imports the repo's packages when run as `python finetune/predict.py`."""
    proc = subprocess.run(
        [sys.executable, str(repo_root / "finetune" / "predict.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=repo_root,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--threshold" in proc.stdout
