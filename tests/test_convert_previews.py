"""Converter previews that show every class and split, and the warning about stuff-like thing labels."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dataset_scripts.conversion.plan import preview_spread, stuff_like_things
from dataset_scripts.cvat_to_panoptic import ConversionOptions, convert_exports, main
from dataset_scripts.panoptic_format import load_panoptic_json
from tests.test_convert import coco_export, rect, write_picture

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_spread_adds_new_classes_and_alternates_splits():
    # By name the first four are all "machines": the old previews showed class 1 only, train only.
    pictures = [
        ("machines_1", "train", frozenset({1})),
        ("machines_2", "train", frozenset({1})),
        ("machines_3", "train", frozenset({1, 2})),
        ("machines_4", "val", frozenset({1})),
        ("pipe_1", "train", frozenset({3, 4})),
        ("tile_1", "val", frozenset({5})),
        ("tile_2", "val", frozenset({1, 5, 6})),
    ]
    chosen = [pictures[i][0] for i in preview_spread(pictures, 4)]
    assert chosen == ["machines_3", "tile_2", "pipe_1", "machines_4"]  # ties: most classes, then name
    shown = set().union(*(pictures[i][2] for i in preview_spread(pictures, 4)))
    assert shown == {1, 2, 3, 4, 5, 6}


def test_spread_is_bounded_and_handles_one_split_and_test():
    pictures = [("b", "train", frozenset({1})), ("a", "train", frozenset()), ("c", "test", frozenset({2}))]
    assert preview_spread(pictures, 0) == []
    assert preview_spread(pictures, 10) == [0, 2, 1]  # every picture once; train, test, train
    assert preview_spread([], 3) == []


def test_quickstart_previews_cover_every_class_and_split(repo_root, tmp_path):
    """The Makefile's convert-sample run: 4 previews, both splits, every class, named by split."""
    sample = repo_root / "sample_data"
    if not (sample / "cvat_task_machines").is_dir():
        pytest.skip("sample_data/ is not in this checkout")
    out = tmp_path / "sample_panoptic"
    argv = ["--cvat", str(sample / "cvat_task_materials"), "--cvat", str(sample / "cvat_task_machines")]
    argv += ["--stuff-labels", "floor", "wall", "sky", "ground", "--val-ratio", "0.25", "--seed", "0"]
    assert main([*argv, "--preview", "4", "--output-dir", str(out)]) == 0
    names = sorted(p.name for p in (out / "preview").glob("*.png"))
    assert len(names) == 4
    assert {name.split("_", 1)[0] for name in names} == {"train", "val"}
    shown, every = set(), set()
    for split in ("train", "val"):
        doc = load_panoptic_json(out / "annotations" / f"panoptic_{split}.json")
        every |= {c["id"] for c in doc["categories"]}
        for ann in doc["annotations"]:
            if f"{split}_{Path(ann['file_name']).name}" in names:
                shown |= {s["category_id"] for s in ann["segments_info"]}
    assert shown == every


def test_stuff_like_names():
    cats = [
        {"name": "floor", "isthing": 1},
        {"name": "Brick-Wall", "isthing": 1},
        {"name": "sky", "isthing": 0},
        {"name": "excavator", "isthing": 1},
        {"name": "wallpaper", "isthing": 1},
    ]
    assert stuff_like_things(cats) == ["floor", "Brick-Wall"]


@pytest.fixture
def floor_export(tmp_path) -> Path:
    cats = [{"id": 1, "name": "excavator"}, {"id": 2, "name": "floor"}]
    images = [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 2, "segmentation": [rect(0, 24, 64, 48)], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [rect(5, 5, 30, 30)], "iscrowd": 0},
    ]
    root = coco_export(tmp_path / "export", images, anns, cats)
    write_picture(root / "images" / "a.jpg")
    return root


def _stuff_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "look like stuff" in r.getMessage()]


def test_warns_when_stuff_like_labels_become_things(floor_export, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        convert_exports([floor_export], tmp_path / "out", ConversionOptions(val_ratio=0))
    [message] = _stuff_warnings(caplog)
    assert "floor" in message and "--stuff-labels floor" in message and "excavator" not in message


def test_no_warning_when_stuff_is_declared(floor_export, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        convert_exports([floor_export], tmp_path / "out", ConversionOptions(val_ratio=0, stuff_labels=["floor"]))
    assert _stuff_warnings(caplog) == []
