"""The converter on the maintainers' real CVAT exports (``../shared/data/real``; skipped when absent).

Export layouts are rebuilt in ``tmp_path`` with symbolic links (the shared files are never copied).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_scripts.conversion.report import BOX_ONLY, MISSING_IMAGE, TAG
from dataset_scripts.cvat.records import ConversionError
from dataset_scripts.cvat_to_panoptic import ConversionOptions, convert_exports
from dataset_scripts.panoptic_format import load_panoptic_json, read_panoptic_png, segment_stats
from tests.export_builders import group_by_code
from tests.panoptic_checks import pq_against_itself

pytestmark = [
    pytest.mark.shared,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

URBAN_IMAGES = 5  # of the 20 annotated, only these files are present


def link(target: Path, link_path: Path) -> Path:
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.symlink_to(target)
    return link_path


def coco_layout(root: Path, json_file: Path, images: Path | None) -> Path:
    link(json_file, root / "annotations" / "instances_default.json")
    if images is not None:
        link(images, root / "images")
    return root


def xml_layout(root: Path, xml_file: Path, images: Path) -> Path:
    link(xml_file, root / "annotations.xml")
    link(images, root / "images")
    return root


def panoptic_outputs(out: Path) -> dict[str, tuple[dict, dict[str, np.ndarray]]]:
    """Per split: the JSON and every PNG's id map; checks the format invariants on the way.

    The converter numbers segments 1..n, which is checked first; areas and boxes are then compared
    with `segment_stats` (linear time for such small ids, even on these 10-14 Mpx photos).
    """
    result = {}
    for json_path in sorted((out / "annotations").glob("panoptic_*.json")):
        split = json_path.stem[len("panoptic_") :]
        doc = load_panoptic_json(json_path)
        maps = {}
        for ann in doc["annotations"]:
            ids = read_panoptic_png(out / "annotations" / f"panoptic_{split}" / ann["file_name"])
            segs = {s["id"]: s for s in ann["segments_info"]}
            assert sorted(segs) == list(range(1, len(segs) + 1)) and ids.min() >= 0 and ids.max() <= len(segs)
            stats = segment_stats(ids)
            assert len(segs) == len(ann["segments_info"]) and set(segs) == set(stats)
            for seg_id, seg in segs.items():
                assert (seg["area"], seg["bbox"]) == (stats[seg_id].area, stats[seg_id].bbox)
            maps[ann["file_name"]] = ids
        result[split] = (doc, maps)
    return result


def test_urban_scene_xml_and_coco_exports_give_identical_output(shared_data, tmp_path):
    """One CVAT task exported as XML 1.1 and as COCO 1.0: brush masks (CVAT RLE vs COCO RLE, all
    iscrowd=1), box-only signs, image tags, overlapping masks; 15 of 20 pictures missing.

    This real task has no polygons; `tests/test_xml_coco_pair.py` checks the same identity on a
    synthetic task with polygons, brush masks, z-order and boxes, and always runs."""
    urban = shared_data / "cvat_urban_scene"
    images = urban / "images" / "raw"
    xml = xml_layout(tmp_path / "xml", urban / "at_73e122a" / "annotations.xml", images)
    coco = coco_layout(
        tmp_path / "coco", urban / "at_73e122a" / "annotations" / "instances_default.json", images
    )
    opts = ConversionOptions(stuff_labels=["ROAD_SURFACE"], skip_missing_images=True)
    reports = {
        name: convert_exports([src], tmp_path / f"out_{name}", opts)
        for name, src in (("xml", xml), ("coco", coco))
    }

    outputs = {name: panoptic_outputs(tmp_path / f"out_{name}") for name in reports}
    assert outputs["xml"].keys() == outputs["coco"].keys()
    for split, (doc, maps) in outputs["xml"].items():
        coco_doc, coco_maps = outputs["coco"][split]
        assert doc == {**coco_doc, "info": doc["info"]}
        assert maps.keys() == coco_maps.keys()
        for name, ids in maps.items():
            np.testing.assert_array_equal(ids, coco_maps[name], err_msg=name)

    docs = [doc for doc, _ in outputs["xml"].values()]
    assert sum(len(d["images"]) for d in docs) == URBAN_IMAGES
    assert [(c["name"], c["isthing"]) for c in docs[0]["categories"]] == [
        ("CAR", 1),
        ("PEDESTRIAN", 1),
        ("ROAD_SURFACE", 0),
    ]
    # Every brush mask is iscrowd=1 in the export: none may be dropped for it.
    segments = [s for d in docs for a in d["annotations"] for s in a["segments_info"]]
    assert len(segments) > 50 and all(s["iscrowd"] == 0 for s in segments)
    for name, report in reports.items():
        codes = group_by_code(report.warnings)
        assert len(codes[MISSING_IMAGE]) == 20 - URBAN_IMAGES, name
        assert codes[BOX_ONLY] and all("TRAFFIC_SIGN" in w.message for w in codes[BOX_ONLY])
    assert len(group_by_code(reports["xml"].warnings)[TAG]) == URBAN_IMAGES  # tags only survive in XML


def test_urban_scene_missing_pictures_are_an_error_by_default(shared_data, tmp_path):
    urban = shared_data / "cvat_urban_scene"
    xml = xml_layout(tmp_path / "xml", urban / "head" / "annotations.xml", urban / "images" / "raw")
    with pytest.raises(
        ConversionError,
        match=r"annotations.xml: image 0 \(adam-borkowski-NyPV7oHdlSo-unsplash.jpg\): image file not found",
    ):
        convert_exports([xml], tmp_path / "out", ConversionOptions())
    assert not (tmp_path / "out").exists()


def test_car_interior_bbox_and_area_are_recomputed(shared_data, tmp_path, capsys):
    """Every exported bbox/area is wrong (area = box w*h, boxes outside the image): recomputed."""
    car = shared_data / "cvat_car_interior"
    export = coco_layout(tmp_path / "car", car / "annotations" / "instances_default.json", car / "images")
    out = tmp_path / "out"
    report = convert_exports([export], out, ConversionOptions(val_ratio=0.3))
    outputs = panoptic_outputs(out)
    assert sum(len(doc["images"]) for doc, _ in outputs.values()) == 6
    source = json.loads((car / "annotations" / "instances_default.json").read_text())
    exported = {(a["bbox"][0], a["area"]) for a in source["annotations"]}
    segments = [s for doc, _ in outputs.values() for a in doc["annotations"] for s in a["segments_info"]]
    assert len(segments) >= 25
    assert not any((s["bbox"][0], s["area"]) in exported for s in segments)
    for (doc, _), split in zip(outputs.values(), outputs, strict=True):
        for img, ann in zip(doc["images"], doc["annotations"], strict=True):
            for seg in ann["segments_info"]:
                x, y, w, h = seg["bbox"]
                assert x + w <= img["width"] and y + h <= img["height"] and w > 0 and h > 0
        assert pq_against_itself(out, split, capsys) == pytest.approx(1.0)
    unused = [w for w in report.warnings if w.code == "unused_label"]
    assert len(unused) == 13  # 23 categories, 10 used


def eva6_annotations(shared_data: Path) -> Path:
    return shared_data / "eva6_construction" / "DatasetCreation" / "annotations" / "coco_val_small.json"


def test_eva6_resized_pictures_are_a_size_mismatch(shared_data, tmp_path):
    eva6 = shared_data / "eva6_construction"
    export = coco_layout(tmp_path / "eva6", eva6_annotations(shared_data), eva6 / "Predictions" / "images")
    with pytest.raises(
        ConversionError, match=r"\.jpg \(image id \d+ of .*\): decoded size \d+x800 .* does not match"
    ):
        convert_exports([export], tmp_path / "out", ConversionOptions(skip_missing_images=True))
    assert not (tmp_path / "out").exists()


def test_eva6_categories_stuff_polygons_and_box_only(shared_data, tmp_path, capsys):
    """The construction-materials annotations (16 stuff + 48 thing classes, multi-part stuff polygons,
    3 box-only annotations) on stand-in pictures of the annotated sizes."""
    source = json.loads(eva6_annotations(shared_data).read_text())
    per_image: dict[int, int] = {}
    for ann in source["annotations"]:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    box_only = {ann["image_id"] for ann in source["annotations"] if not ann["segmentation"]}
    small = [img for img in source["images"] if img["width"] * img["height"] <= 400_000]
    busiest = sorted(small, key=lambda img: (-per_image.get(img["id"], 0), img["id"]))[:6]
    chosen = {img["id"]: img for img in busiest + [i for i in small if i["id"] in box_only]}
    export = coco_layout(tmp_path / "eva6", eva6_annotations(shared_data), None)
    rng = np.random.default_rng(0)
    for img in chosen.values():
        pixels = rng.integers(0, 255, (img["height"], img["width"], 3), dtype=np.uint8)
        (export / "images").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(export / "images" / img["file_name"])
    stuff = [c["name"] for c in source["categories"] if not c["isthing"]]
    out = tmp_path / "out"
    report = convert_exports(
        [export], out, ConversionOptions(stuff_labels=stuff, skip_missing_images=True, val_ratio=0.25)
    )
    outputs = panoptic_outputs(out)
    doc = next(iter(outputs.values()))[0]
    names = {c["name"]: c for c in doc["categories"]}
    assert {n for n, c in names.items() if not c["isthing"]} == set(stuff)
    assert all(c["isthing"] for n, c in names.items() if n not in stuff)
    assert sum(len(d["images"]) for d, _ in outputs.values()) == len(chosen)
    assert {w.annotation_id for w in group_by_code(report.warnings)[BOX_ONLY]} >= {"30996"}
    # One segment per stuff class per image.
    stuff_ids = {c["id"] for c in doc["categories"] if not c["isthing"]}
    for d, _ in outputs.values():
        for ann in d["annotations"]:
            cats = [s["category_id"] for s in ann["segments_info"] if s["category_id"] in stuff_ids]
            assert len(cats) == len(set(cats))
    for split in outputs:
        assert pq_against_itself(out, split, capsys) == pytest.approx(1.0)
