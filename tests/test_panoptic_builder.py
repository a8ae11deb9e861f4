"""The `datasets` builder over a COCO-panoptic folder, the category table in its features, the CLI."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from dataset_scripts import build_dataset
from dataset_scripts.panoptic_builder import (
    PanopticFolderBuilder,
    build_hf_dataset,
    load_categories,
    panoptic_features,
    read_split_categories,
)
from dataset_scripts.panoptic_format import (
    PanopticFormatError,
    read_panoptic_png,
    rgb2id,
    segment_stats,
    write_panoptic_png,
)

CATEGORIES = [
    {"id": 3, "name": "brick", "isthing": 1, "color": [200, 60, 40], "supercategory": "material"},
    {"id": 9, "name": "sky", "isthing": 0, "color": [100, 150, 230], "supercategory": "stuff"},
    {"id": 4, "name": "pipe", "isthing": 1, "color": [240, 130, 20], "supercategory": "material"},
]
EXPECTED_CATEGORIES = [
    {"id": c["id"], "name": c["name"], "isthing": bool(c["isthing"]), "color": c["color"]} for c in CATEGORIES
]


def make_panoptic_folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (24, 16)) -> Path:
    """A small COCO-panoptic folder: per image a sky band, one or two bricks, a crowd pipe, void pixels."""
    width, height = size
    rng = np.random.default_rng(0)
    image_id = 100
    for split, count in counts.items():
        images, annotations = [], []
        for i in range(count):
            image_id += 1
            ids = np.zeros((height, width), dtype=np.int64)
            ids[: height // 2] = 0x0A0B0C  # sky: a large id, all three RGB channels used
            ids[height // 2 :, 2:9] = 7  # brick
            if i % 2:
                ids[height - 4 :, 12:20] = 8  # second brick
            ids[height // 2 + 1 : height // 2 + 4, 14:22] = 300  # crowd pipe
            ids[height - 1, :] = 0  # void row
            cats = {0x0A0B0C: 9, 7: 3, 8: 3, 300: 4}
            stats = segment_stats(ids)
            segments = [
                {
                    "id": seg_id,
                    "category_id": cats[seg_id],
                    "iscrowd": int(seg_id == 300),
                    "bbox": s.bbox,
                    "area": s.area,
                }
                for seg_id, s in sorted(stats.items())
            ]
            stem = f"{split}_{i:03d}"
            write_panoptic_png(root / "annotations" / f"panoptic_{split}" / f"{stem}.png", ids)
            pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            (root / split).mkdir(parents=True, exist_ok=True)
            pil = Image.fromarray(pixels)
            if i == 0:
                pil = pil.convert("L")  # a grayscale file: the dataset must still give RGB
            pil.save(root / split / f"{stem}.png")
            images.append({"id": image_id, "file_name": f"{stem}.png", "width": width, "height": height})
            annotations.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments})
        doc = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (root / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(doc))
    return root


@pytest.fixture
def panoptic_dir(tmp_path) -> Path:
    return make_panoptic_folder(tmp_path / "panoptic", {"train": 3, "val": 2})


@pytest.fixture
def built(panoptic_dir, tmp_path) -> datasets.DatasetDict:
    return build_hf_dataset(panoptic_dir, cache_dir=tmp_path / "cache")


def test_rows_features_and_pixels(built, panoptic_dir):
    assert set(built) == {"train", "val"}
    assert built["train"].num_rows == 3 and built["val"].num_rows == 2
    expected = panoptic_features(EXPECTED_CATEGORIES)
    for split in built.values():
        assert split.features == expected
        assert isinstance(split.features["panoptic"], datasets.Image)
    for split_name, split in built.items():
        doc = json.loads((panoptic_dir / "annotations" / f"panoptic_{split_name}.json").read_text())
        for row, image, ann in zip(split, doc["images"], doc["annotations"], strict=True):
            assert row["image_id"] == image["id"] and row["file_name"] == image["file_name"]
            assert (row["width"], row["height"]) == (image["width"], image["height"])
            assert row["image"].mode == "RGB" and row["image"].size == (image["width"], image["height"])
            ids = rgb2id(np.asarray(row["panoptic"].convert("RGB")))
            png = read_panoptic_png(
                panoptic_dir / "annotations" / f"panoptic_{split_name}" / ann["file_name"]
            )
            assert np.array_equal(ids, png)
            got = [{**s, "bbox": [int(v) for v in s["bbox"]]} for s in row["segments_info"]]
            assert got == ann["segments_info"]
            assert set(np.unique(ids)) - {0} == {s["id"] for s in row["segments_info"]}


def test_categories_round_trip(built, tmp_path):
    assert load_categories(built) == EXPECTED_CATEGORIES
    assert load_categories(built["val"]) == EXPECTED_CATEGORIES

    built.save_to_disk(str(tmp_path / "saved"))
    reloaded = datasets.load_from_disk(str(tmp_path / "saved"))
    assert load_categories(reloaded) == EXPECTED_CATEGORIES
    assert (
        load_categories(reloaded["train"].map(lambda row: {"width": row["width"] + 1})) == EXPECTED_CATEGORIES
    )

    # What a Hub push keeps: the features in the Parquet metadata and in the card's YAML.
    built["train"].to_parquet(str(tmp_path / "train.parquet"))
    from_parquet = datasets.Dataset.from_parquet(str(tmp_path / "train.parquet"))
    assert load_categories(from_parquet) == EXPECTED_CATEGORIES
    yaml_features = datasets.Features._from_yaml_list(built["train"].features._to_yaml_list())
    assert (
        load_categories(datasets.Dataset.from_dict({k: [] for k in yaml_features}, features=yaml_features))
        == EXPECTED_CATEGORIES
    )

    plain = datasets.Dataset.from_dict({"x": [1]})
    with pytest.raises(ValueError, match="no category table"):
        load_categories(plain)


def test_changed_folder_is_rebuilt_not_served_from_cache(panoptic_dir, tmp_path):
    cache = tmp_path / "cache"
    assert load_categories(build_hf_dataset(panoptic_dir, cache_dir=cache))[0]["name"] == "brick"
    for split in ("train", "val"):
        path = panoptic_dir / "annotations" / f"panoptic_{split}.json"
        doc = json.loads(path.read_text())
        doc["categories"][0]["name"] = "bricks"
        path.write_text(json.dumps(doc))
    assert load_categories(build_hf_dataset(panoptic_dir, cache_dir=cache))[0]["name"] == "bricks"


def test_single_split_folder(tmp_path):
    folder = make_panoptic_folder(tmp_path / "p", {"test": 1})
    dsd = build_hf_dataset(folder, cache_dir=tmp_path / "cache")
    assert list(dsd) == ["test"] and dsd["test"].num_rows == 1


def test_broken_folders_give_clear_errors(panoptic_dir, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="not found"):
        build_hf_dataset(tmp_path / "nope", cache_dir=cache)

    empty = tmp_path / "empty"
    (empty / "annotations").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="panoptic_train.json"):
        build_hf_dataset(empty, cache_dir=cache)

    png = panoptic_dir / "annotations" / "panoptic_val" / "val_001.png"
    png.unlink()
    with pytest.raises(FileNotFoundError, match="val_001.png"):
        build_hf_dataset(panoptic_dir, cache_dir=cache)

    broken = make_panoptic_folder(tmp_path / "b", {"train": 2})
    (broken / "train" / "train_000.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image of image 101 .*train_000.png"):
        build_hf_dataset(broken, cache_dir=cache)

    mismatch = make_panoptic_folder(tmp_path / "m", {"train": 1, "val": 1})
    path = mismatch / "annotations" / "panoptic_val.json"
    doc = json.loads(path.read_text())
    doc["categories"] = doc["categories"][:2]
    doc["annotations"][0]["segments_info"] = [
        s for s in doc["annotations"][0]["segments_info"] if s["category_id"] != 4
    ]
    path.write_text(json.dumps(doc))
    with pytest.raises(PanopticFormatError, match="categories differ"):
        build_hf_dataset(mismatch, cache_dir=cache)

    bad_json = make_panoptic_folder(tmp_path / "j", {"train": 1})
    (bad_json / "annotations" / "panoptic_train.json").write_text("{not json")
    with pytest.raises(PanopticFormatError, match="panoptic_train.json"):
        build_hf_dataset(bad_json, cache_dir=cache)

    with pytest.raises(ValueError, match="data_dir"):
        PanopticFolderBuilder()


def test_cli_saves_atomically_and_pushes(panoptic_dir, tmp_path, monkeypatch, caplog):
    out = tmp_path / "hf"
    calls = []

    def record_push(self, repo_id, **kwargs):
        calls.append((type(self).__name__, repo_id, kwargs, set(self)))

    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", record_push)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    caplog.set_level(logging.INFO)
    argv = ["--panoptic", str(panoptic_dir), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert build_dataset.main([*argv, "--push-to-hub", "me/site-panoptic", "--private"]) == 0
    assert load_categories(datasets.load_from_disk(str(out))) == EXPECTED_CATEGORIES
    assert calls == [("DatasetDict", "me/site-panoptic", calls[0][2], {"train", "val"})]
    assert calls[0][2]["private"] is True and "token" not in calls[0][2]
    assert "hf_secret_token_value" not in caplog.text
    assert "brick" in caplog.text and "3 images" in caplog.text

    # Existing output without --overwrite: refused, untouched; with it: replaced, no temp left over.
    marker = out / "marker"
    marker.write_text("x")
    assert build_dataset.main(argv) == 2 and marker.exists()
    assert build_dataset.main([*argv, "--overwrite"]) == 0 and not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".hf")) == []
    assert len(calls) == 1

    # A broken folder: non-zero exit, nothing written.
    shutil.rmtree(panoptic_dir / "annotations")
    assert build_dataset.main(["--panoptic", str(panoptic_dir), "--out", str(tmp_path / "hf2")]) == 2
    assert not (tmp_path / "hf2").exists()


def test_bundled_sample_converts_and_builds(repo_root, tmp_path):
    """sample_data -> cvat_to_panoptic.convert_exports (the Makefile's options) -> builder."""
    from dataset_scripts.cvat_to_panoptic import ConversionOptions, convert_exports

    sample = repo_root / "sample_data"
    exports = [sample / "cvat_task_materials", sample / "cvat_task_machines"]
    if not all(e.is_dir() for e in exports):
        pytest.skip("sample_data/ not generated (python dataset_scripts/make_sample.py --out sample_data)")
    options = ConversionOptions(stuff_labels=("floor", "wall", "sky", "ground"), val_ratio=0.25, seed=0)
    convert_exports(exports, tmp_path / "panoptic", options)
    dsd = build_hf_dataset(tmp_path / "panoptic", cache_dir=tmp_path / "cache")

    categories = load_categories(dsd)
    assert {c["name"]: c["isthing"] for c in categories} == {
        "brick": True,
        "pipe": True,
        "tile": True,
        "excavator": True,
        "floor": False,
        "wall": False,
        "sky": False,
        "ground": False,
    }
    name_of = {c["id"]: c["name"] for c in categories}
    assert set(dsd) == {"train", "val"} and dsd["train"].num_rows > dsd["val"].num_rows > 0
    for split in dsd.values():
        seen = {name_of[s["category_id"]] for row in split["segments_info"] for s in row}
        assert seen == set(name_of.values())  # a 25% val split still sees every class

    rows = {row["file_name"]: row for split in dsd.values() for row in split}
    shared = rows["site_shared_000.jpg"]  # annotations merged from both exports
    assert {"excavator", "brick"} <= {name_of[s["category_id"]] for s in shared["segments_info"]}
    rotated = rows["materials_005.jpg"]  # EXIF-rotated file: upright in the dataset
    assert rotated["image"].size == rotated["panoptic"].size == (rotated["width"], rotated["height"])
    assert rows["materials_006.jpg"]["image"].mode == "RGB"  # grayscale file


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: d["annotations"][0]["segments_info"].append(None),
            r"image 101: segments_info\[\d+\] is null",
        ),
        (
            lambda d: d["annotations"][0]["segments_info"][0].update(category_id="1"),
            r'image 101: segment \d+ has category_id "1" \(a string\)',
        ),
        (lambda d: d["images"].append(None), r"images\[1\] is null"),
        (lambda d: d["images"][0].update(width="640"), r'image 101 has width "640", expected an integer'),
        (
            lambda d: d["annotations"][0]["segments_info"][0].pop("bbox"),
            r"image 101 segment \d+ needs an area and a bbox",
        ),
    ],
)
def test_cli_badly_typed_json_is_one_line_error(tmp_path, caplog, mutate, message):
    """null entries and wrongly typed fields: exit 2, one error naming file, image and id, no output."""
    folder = make_panoptic_folder(tmp_path / "p", {"train": 1})
    path = folder / "annotations" / "panoptic_train.json"
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    out = tmp_path / "hf"
    argv = ["--panoptic", str(folder), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert build_dataset.main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "panoptic_train.json" in errors[0], errors
    assert re.search(message, errors[0]), errors[0]
    assert not out.exists()


def test_categories_of_no_split_is_an_error(tmp_path):
    with pytest.raises(PanopticFormatError, match="no split to read the categories from"):
        read_split_categories(tmp_path, [])
