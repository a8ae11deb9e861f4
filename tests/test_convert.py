"""End-to-end conversion of tiny synthetic CVAT exports: output format, images, errors, splits, stuff."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_scripts import stuff_model
from dataset_scripts.conversion.report import (
    BOX_ONLY,
    INVISIBLE,
    MISSING_IMAGE,
    TAG,
    UNUSED_LABEL,
)
from dataset_scripts.conversion.splits import assign_splits
from dataset_scripts.cvat.records import ConversionError
from dataset_scripts.cvat_to_panoptic import ConversionOptions, convert_exports, distinct_colors, main
from dataset_scripts.panoptic_format import load_panoptic_json, read_panoptic_png
from dataset_scripts.sample.rle import uncompressed_rle
from tests.export_builders import check_panoptic_folder, group_by_code, no_output_left
from tests.panoptic_checks import pq_against_itself

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

W, H = 64, 48


def rect(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def write_picture(path: Path, size=(W, H), mode="RGB", orientation: int | None = None, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(pixels).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    img.save(path, **kwargs)


def coco_export(root: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_default.json").write_text(json.dumps(doc))
    return root


@pytest.fixture
def exports(tmp_path) -> dict[str, Path]:
    """A COCO export (4 images: RGB, RLE brush, grayscale PNG, EXIF-rotated) and an XML export.

    ``a.jpg`` is in both exports (same size): its XML polygon adds a second car.
    """
    coco = tmp_path / "coco"
    cats = [
        {"id": 4, "name": "car"},
        {"id": 2, "name": "person"},
        {"id": 9, "name": "road"},
        {"id": 1, "name": "sign"},
        {"id": 3, "name": "unused"},
    ]
    images = [
        {"id": 1, "file_name": "a.jpg", "width": W, "height": H},
        {"id": 2, "file_name": "b.jpg", "width": W, "height": H},
        {"id": 3, "file_name": "c.png", "width": 48, "height": 32},
        {"id": 4, "file_name": "d.jpg", "width": W, "height": H},
    ]
    brush = np.zeros((H, W), np.uint8)
    brush[5:20, 10:30] = 1
    from pycocotools import mask as mask_utils

    runs = mask_utils.encode(np.asfortranarray(brush))
    uncompressed = uncompressed_rle(brush)
    assert (
        mask_utils.decode(mask_utils.frPyObjects(uncompressed, H, W)).sum()
        == brush.sum()
        == mask_utils.area(runs)
    )
    anns = [
        # Corrupt bbox/area (as CVAT sometimes writes them): must be recomputed.
        {
            "id": 10,
            "image_id": 1,
            "category_id": 4,
            "segmentation": [rect(5, 5, 40, 30)],
            "bbox": [0, 0, 1, 1],
            "area": 1.0,
            "iscrowd": 0,
        },
        {
            "id": 11,
            "image_id": 1,
            "category_id": 2,
            "segmentation": [rect(20, 10, 30, 20)],
            "bbox": [1, 2, 3, 4],
            "area": 99999.0,
            "iscrowd": 0,
        },
        {"id": 12, "image_id": 1, "category_id": 9, "segmentation": [rect(0, 25, 64, 48)], "iscrowd": 0},
        {"id": 13, "image_id": 1, "category_id": 1, "segmentation": [], "bbox": [1, 1, 3, 3], "iscrowd": 0},
        {"id": 20, "image_id": 2, "category_id": 4, "segmentation": uncompressed, "iscrowd": 1},
        {"id": 21, "image_id": 2, "category_id": 9, "segmentation": [rect(0, 30, 64, 48)], "iscrowd": 0},
        {"id": 22, "image_id": 2, "category_id": 2, "segmentation": [rect(0, 0, 5, 5)], "iscrowd": 0},
        {"id": 30, "image_id": 3, "category_id": 2, "segmentation": [rect(2, 2, 20, 30)], "iscrowd": 0},
        {"id": 31, "image_id": 3, "category_id": 4, "segmentation": [rect(25, 2, 40, 20)], "iscrowd": 0},
        {"id": 40, "image_id": 4, "category_id": 4, "segmentation": [rect(0, 0, 10, 10)], "iscrowd": 0},
        {"id": 41, "image_id": 4, "category_id": 2, "segmentation": [rect(30, 20, 50, 40)], "iscrowd": 0},
    ]
    coco_export(coco, images, anns, cats)
    write_picture(coco / "images" / "a.jpg", seed=1)
    write_picture(coco / "images" / "b.jpg", seed=2)
    write_picture(coco / "images" / "c.png", size=(48, 32), mode="L", seed=3)
    # Stored 48x64 with Orientation 6 (rotate 90 degrees clockwise): upright it is 64x48 like the JSON.
    write_picture(coco / "images" / "d.jpg", size=(H, W), orientation=6, seed=4)

    xml = tmp_path / "xml"
    (xml / "images").mkdir(parents=True)
    (xml / "annotations.xml").write_text(
        f"""<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version>
  <meta><task><labels><label><name>car</name></label><label><name>night</name></label></labels></task></meta>
  <image id="0" name="a.jpg" width="{W}" height="{H}">
    <polygon label="car" occluded="0" points="45,2;60,2;60,20;45,20" z_order="0"/>
  </image>
  <image id="1" name="e.jpg" width="{W}" height="{H}">
    <polygon label="car" occluded="0" points="0,0;30,0;30,30;0,30" z_order="2"/>
    <polygon label="person" occluded="0" points="10,10;20,10;20,20;10,20" z_order="1"/>
    <tag label="night" source="manual"/>
  </image>
</annotations>"""
    )
    write_picture(xml / "images" / "e.jpg", seed=5)
    return {"coco": coco, "xml": xml, "root": tmp_path}


def options(**kwargs) -> ConversionOptions:
    kwargs.setdefault("stuff_labels", ["road"])
    return ConversionOptions(**kwargs)


# ----------------------------------------------------------------------------- the happy path


def test_convert_two_exports(exports, capsys):
    out = exports["root"] / "out"
    report = convert_exports([exports["coco"], exports["xml"]], out, options(val_ratio=0.4, seed=1))
    docs = check_panoptic_folder(out)
    assert set(docs) == {"train", "val"}
    cats = docs["train"]["categories"]
    assert [(c["name"], c["isthing"]) for c in cats] == [("car", 1), ("person", 1), ("road", 0)]
    by_name = {c["name"]: c["id"] for c in cats}
    anns = {
        img["file_name"]: ann
        for doc in docs.values()
        for img, ann in zip(doc["images"], doc["annotations"], strict=True)
    }
    assert sorted(anns) == ["a.jpg", "b.jpg", "c.png", "d.jpg", "e.jpg"]
    assert report.splits == {"train": 3, "val": 2}

    # a.jpg: COCO car + person + road, and the car from the XML export (merged by file name).
    a = anns["a.jpg"]["segments_info"]
    assert sorted(s["category_id"] for s in a) == sorted(
        [by_name["car"]] * 2 + [by_name["person"], by_name["road"]]
    )
    car = next(s for s in a if s["category_id"] == by_name["car"] and s["bbox"][0] == 5)
    person = next(s for s in a if s["category_id"] == by_name["person"])
    assert person["area"] == 100 and person["bbox"] == [20, 10, 10, 10]  # smaller segment wins, exact stats
    assert car["area"] == 35 * 25 - 100  # recomputed: the export said bbox [0,0,1,1], area 1
    road = next(s for s in a if s["category_id"] == by_name["road"])
    assert road["area"] == 64 * 23 - (30 - 25) * 35  # the car covers the road's top rows
    # Brush masks are ordinary segments by default.
    assert all(s["iscrowd"] == 0 for ann in anns.values() for s in ann["segments_info"])
    # e.jpg: the car's higher z_order hides the person completely.
    assert [s["category_id"] for s in anns["e.jpg"]["segments_info"]] == [by_name["car"]]

    codes = group_by_code(report.warnings)
    assert [w.annotation_id for w in codes[BOX_ONLY]] == ["13"]
    assert codes[TAG][0].image == "e.jpg"
    assert codes[INVISIBLE][0].annotation_id == "1/polygon#1"
    assert {w.message.split("'")[1] for w in codes[UNUSED_LABEL]} == {"sign", "unused", "night"}

    written = json.loads((out / "report.json").read_text())
    classes = {c["name"]: c for c in written["classes"]}
    assert classes["person"]["segments"] == 4 and classes["car"]["images"] == 5
    assert classes["road"]["area_p50"] > 0 and written["warning_counts"][BOX_ONLY] == 1
    assert "car" in report.format_table() and "box_only 1" in report.format_table()
    for split in docs:
        assert pq_against_itself(out, split, capsys) == pytest.approx(1.0)


def test_pictures_are_written_upright_rgb_and_copied_when_unchanged(exports):
    out = exports["root"] / "out"
    convert_exports([exports["coco"]], out, options(val_ratio=0))
    src = exports["coco"] / "images"
    assert (out / "train" / "a.jpg").read_bytes() == (src / "a.jpg").read_bytes()
    with Image.open(out / "train" / "c.png") as gray:
        assert gray.mode == "RGB" and gray.size == (48, 32)
    with Image.open(out / "train" / "d.jpg") as rotated, Image.open(src / "d.jpg") as stored:
        assert stored.size == (H, W) and rotated.size == (W, H)
        assert rotated.getexif().get(0x0112, 1) == 1
        expected = np.asarray(stored.transpose(Image.Transpose.ROTATE_270), dtype=np.float32)
        assert np.abs(np.asarray(rotated, dtype=np.float32) - expected).mean() < 8  # JPEG q95 re-encode


def test_options_keep_crowd_and_overlap_order(exports):
    out = exports["root"] / "out"
    convert_exports([exports["coco"]], out, options(val_ratio=0, keep_crowd=True, overlap="order"))
    doc = load_panoptic_json(out / "annotations" / "panoptic_train.json")
    anns = {img["file_name"]: ann for img, ann in zip(doc["images"], doc["annotations"], strict=True)}
    assert [s["iscrowd"] for s in anns["b.jpg"]["segments_info"] if s["area"] == 300] == [1]
    # The person is listed after the car in a.jpg: with "order" it is still in front.
    person = [s for s in anns["a.jpg"]["segments_info"] if s["bbox"] == [20, 10, 10, 10]]
    assert person and person[0]["area"] == 100


def test_overlap_order_makes_the_later_annotation_win(tmp_path):
    coco_export(
        tmp_path / "e",
        [{"id": 1, "file_name": "a.jpg", "width": W, "height": H}],
        [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [rect(10, 10, 20, 20)]},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": [rect(0, 0, 40, 40)]},
        ],
        [{"id": 1, "name": "small"}, {"id": 2, "name": "big"}],
    )
    write_picture(tmp_path / "e" / "images" / "a.jpg")
    areas = {}
    for rule in ("area", "order"):
        out = tmp_path / rule
        report = convert_exports([tmp_path / "e"], out, ConversionOptions(val_ratio=0, overlap=rule))
        doc = load_panoptic_json(out / "annotations" / "panoptic_train.json")
        areas[rule] = sorted(s["area"] for s in doc["annotations"][0]["segments_info"])
        assert (INVISIBLE in group_by_code(report.warnings)) == (rule == "order")
    assert areas == {"area": [100, 1500], "order": [1600]}


def test_workers_give_the_same_output(exports):
    outs = []
    for workers in (1, 2):
        out = exports["root"] / f"out{workers}"
        convert_exports([exports["coco"], exports["xml"]], out, options(num_workers=workers))
        outs.append(out)
    for path in sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file()):
        if path.name == "report.json":
            continue
        assert (outs[0] / path).read_bytes() == (outs[1] / path).read_bytes(), path


def test_preview(exports):
    out = exports["root"] / "out"
    convert_exports([exports["coco"]], out, options(preview=2))
    previews = sorted((out / "preview").glob("*.png"))
    assert [p.name for p in previews] == ["train_b.png", "val_a.png"]  # one per split, named by it
    with Image.open(previews[0]) as img:
        assert img.width == W and img.height > H  # legend strip below the picture


def test_overwrite(exports):
    out = exports["root"] / "out"
    convert_exports([exports["coco"]], out, options())
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_exports([exports["coco"]], out, options())
    (out / "stale.txt").write_text("x")
    convert_exports([exports["coco"]], out, options(overwrite=True))
    assert not (out / "stale.txt").exists() and (out / "report.json").is_file()


# ----------------------------------------------------------------------------- user errors


def _break_size(exports):
    write_picture(exports["coco"] / "images" / "b.jpg", size=(W - 4, H))


def _corrupt(exports):
    (exports["coco"] / "images" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def _truncate(exports):
    data = (exports["coco"] / "images" / "b.jpg").read_bytes()
    (exports["coco"] / "images" / "b.jpg").write_bytes(data[: len(data) // 2])


def _remove(exports):
    (exports["coco"] / "images" / "b.jpg").unlink()


def _bad_json(exports):
    path = exports["coco"] / "annotations" / "instances_default.json"
    path.write_text(path.read_text()[:-10])


def _bad_rle_size(exports):
    path = exports["coco"] / "annotations" / "instances_default.json"
    doc = json.loads(path.read_text())
    doc["annotations"][4]["segmentation"]["size"] = [H, W + 1]
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("damage", "match", "workers"),
    [
        (_break_size, r"b.jpg \(image id 2 of .*instances_default.json\): decoded size 60x48 .* 64x48", 1),
        (_break_size, r"b.jpg \(image id 2 of .*instances_default.json\): decoded size 60x48 .* 64x48", 2),
        (_corrupt, r"b.jpg .*cannot decode image", 1),
        (_corrupt, r"b.jpg .*cannot decode image", 2),
        (_truncate, r"b.jpg .*cannot decode image", 1),
        (_remove, r"instances_default.json: image 2 \(b.jpg\): image file not found", 1),
        (_bad_json, r"instances_default.json: malformed JSON", 1),
        (_bad_rle_size, r"instances_default.json: image 2 \(b.jpg\), annotation 20: RLE size 48x65", 1),
    ],
)
def test_bad_input_is_a_clear_error_and_nothing_is_written(exports, damage, match, workers, caplog):
    damage(exports)
    out = exports["root"] / "out"
    with pytest.raises(ConversionError, match=match):
        convert_exports([exports["coco"]], out, options(num_workers=workers))
    assert no_output_left(exports["root"], out)
    # The CLI: one line, non-zero exit.
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code = main(["--cvat", str(exports["coco"]), "--out", str(out), "--stuff-labels", "road"])
    assert code != 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and errors[0].startswith("error: ")
    assert no_output_left(exports["root"], out)


def test_missing_images_can_be_skipped(exports):
    _remove(exports)
    out = exports["root"] / "out"
    report = convert_exports([exports["coco"]], out, options(skip_missing_images=True))
    missing = group_by_code(report.warnings)[MISSING_IMAGE]
    assert [w.image for w in missing] == ["b.jpg"]
    assert sum(report.splits.values()) == 3


def test_unknown_stuff_label_lists_the_known_ones(exports):
    out = exports["root"] / "out"
    with pytest.raises(
        ConversionError, match=r"unknown label\(s\) 'grass'; known labels: 'car', 'person', 'road'"
    ):
        convert_exports([exports["coco"]], out, options(stuff_labels=["grass"]))
    assert no_output_left(exports["root"], out)


def test_main_writes_the_table(exports, caplog):
    out = exports["root"] / "out"
    with caplog.at_level(logging.INFO):
        code = main(
            [
                "--cvat",
                str(exports["coco"]),
                "--cvat",
                str(exports["xml"]),
                "--out",
                str(out),
                "--stuff-labels",
                "road",
                "--val-ratio",
                "0",
                "--seed",
                "3",
            ]
        )
    assert code == 0
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "area_p50" in text and "road" in text and "images: 5 (train 5)" in text


# ----------------------------------------------------------------------------- stuff from a model


class FakeMapping:
    stuff_names = ["sky", "road"]
    source = "fake"


def test_stuff_from_model_is_pasted_under_cvat_shapes(exports, monkeypatch):
    calls = {}

    def fake_pseudo_label(items, model, mapping, cache_dir, batch_size=4, device=None, load_image=None):
        calls.update(items=items, model=model, cache_dir=cache_dir)
        key, path = items[0]
        assert load_image(path).mode == "RGB"  # the converter passes its upright RGB loader

    def fake_load_stuff_map(cache_dir, key):
        height = 32 if key == "c.png" else H
        width = 48 if key == "c.png" else W
        stuff = np.zeros((height, width), np.int16)  # sky everywhere...
        stuff[height // 2 :] = 1  # ...road in the bottom half
        stuff[:, :2] = -1  # a void column
        return stuff

    monkeypatch.setattr(stuff_model, "load_stuff_mapping", lambda path=None: FakeMapping())
    monkeypatch.setattr(stuff_model, "pseudo_label_stuff", fake_pseudo_label)
    monkeypatch.setattr(stuff_model, "load_stuff_map", fake_load_stuff_map)
    out = exports["root"] / "out"
    convert_exports([exports["coco"]], out, options(stuff_from_model="some/model", val_ratio=0))
    assert calls["model"] == "some/model"
    assert calls["cache_dir"] == exports["root"] / "out.stuff-cache" / "some_model"
    assert [key for key, _ in calls["items"]] == ["a.jpg", "b.jpg", "c.png", "d.jpg"]

    doc = check_panoptic_folder(out)["train"]
    cats = {c["name"]: c for c in doc["categories"]}
    assert [(c["name"], c["isthing"]) for c in doc["categories"]] == [
        ("car", 1),
        ("person", 1),
        ("road", 0),
        ("sky", 0),
    ]
    img = next(i for i in doc["images"] if i["file_name"] == "a.jpg")
    ann = next(a for a in doc["annotations"] if a["image_id"] == img["id"])
    ids = read_panoptic_png(out / "annotations" / "panoptic_train" / ann["file_name"])
    cat_of = {s["id"]: s["category_id"] for s in ann["segments_info"]}
    cat_map = np.vectorize(lambda i: cat_of.get(i, 0))(ids)
    assert (cat_map[:, :2][:25] == 0).all()  # model void (above the CVAT road) stays void
    assert cat_map[0, 50] == cats["sky"]["id"]  # model stuff fills unannotated pixels
    assert (cat_map[25:, 2:][:, 38:] == cats["road"]["id"]).all()  # CVAT road over model sky/road
    assert cat_map[10, 10] == cats["car"]["id"]  # things on top
    assert sum(1 for s in ann["segments_info"] if s["category_id"] == cats["road"]["id"]) == 1  # merged


def test_model_stuff_name_clashing_with_a_thing_is_an_error(exports, monkeypatch):
    class Clash:
        stuff_names = ["person"]

    monkeypatch.setattr(stuff_model, "load_stuff_mapping", lambda path=None: Clash())
    out = exports["root"] / "out"
    with pytest.raises(ConversionError, match="'person' are CVAT things and also stuff classes"):
        convert_exports([exports["coco"]], out, options(stuff_from_model="m"))


# ----------------------------------------------------------------------------- splits


def test_splits_are_deterministic_and_stratified():
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(8)]
    image_classes = {}
    for i in range(50):
        image_classes[f"img{i:02d}.jpg"] = {"common"} | {c for c in classes if rng.random() < 0.1}
    image_classes["rare_a.jpg"] = {"rare"}
    image_classes["rare_b.jpg"] = {"rare", "common"}
    image_classes["single.jpg"] = {"single"}
    first = assign_splits(image_classes, val_ratio=0.2, test_ratio=0.1, seed=5)
    assert first == assign_splits(
        dict(reversed(image_classes.items())), val_ratio=0.2, test_ratio=0.1, seed=5
    )
    counts = {s: sum(1 for v in first.values() if v == s) for s in ("train", "val", "test")}
    assert counts == {"train": 37, "val": 11, "test": 5}
    val_classes = set().union(*(image_classes[k] for k, v in first.items() if v == "val"))
    train_classes = set().union(*(image_classes[k] for k, v in first.items() if v == "train"))
    with_two = {c for c in {"rare", *classes} if sum(c in v for v in image_classes.values()) >= 2}
    assert with_two <= val_classes  # every class with >= 2 images is evaluated
    assert with_two | {"single"} <= train_classes  # ... and still trained on
    assert first != assign_splits(image_classes, val_ratio=0.2, test_ratio=0.1, seed=6)


def test_val_ratio_zero_puts_everything_in_train():
    split = assign_splits({f"{i}.jpg": {"a"} for i in range(10)}, val_ratio=0, test_ratio=0)
    assert set(split.values()) == {"train"}
    with pytest.raises(ValueError, match="val_ratio"):
        assign_splits({"a.jpg": {"a"}}, val_ratio=0.7, test_ratio=0.4)


def test_distinct_colors():
    colors = distinct_colors(200)
    assert len({tuple(c) for c in colors}) == 200 and colors == distinct_colors(200)
