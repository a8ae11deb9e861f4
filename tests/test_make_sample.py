"""The procedural CVAT sample generator: determinism, CVAT COCO 1.0 layout, and every promised quirk."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils

from dataset_scripts import make_sample
from dataset_scripts.cvat.xml import decode_cvat_rle, read_cvat_xml
from dataset_scripts.sample.jpeg import EXIF_ORIENTATION_TAG
from dataset_scripts.sample.plans import SHARED_FILE_NAME
from dataset_scripts.sample.rle import cvat_mask_rle, uncompressed_rle
from dataset_scripts.sample.scene import SceneOptions, render_scene

EXPORTS = ("cvat_task_materials", "cvat_task_machines")


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "sample_data"
    assert make_sample.main(["--out", str(out)]) == 0
    return out


def _doc(sample_dir: Path, export: str) -> dict:
    return json.loads((sample_dir / export / "annotations" / "instances_default.json").read_text())


def _decode(segmentation, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_bundled_sample_is_deterministic(sample_dir, tmp_path):
    again = tmp_path / "again"
    assert make_sample.main(["--out", str(again)]) == 0
    assert _files(again) == _files(sample_dir)


def test_bundled_sample_matches_the_committed_sample_data(sample_dir, repo_root):
    """The repository's ``sample_data/`` is what the generator writes (regenerate both together)."""
    committed = repo_root / "sample_data"
    if not (committed / "README.md").is_file():
        pytest.skip("sample_data/ is not in this checkout")
    assert _files(committed) == _files(sample_dir)


def test_render_scene_depends_on_seed_only():
    options = SceneOptions(width=96, height=64)
    a, b, c = render_scene(3, options), render_scene(3, options), render_scene(4, options)
    assert a.image.shape == (64, 96, 3) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image) and a.shapes == b.shapes
    assert not np.array_equal(a.image, c.image)


def test_layout_and_size_limits(sample_dir):
    assert (sample_dir / "README.md").is_file()
    total = sum(p.stat().st_size for p in sample_dir.rglob("*") if p.is_file())
    assert total < 5 * 1024 * 1024
    names = set()
    for export in EXPORTS:
        doc = _doc(sample_dir, export)
        assert set(doc) == {"licenses", "info", "categories", "images", "annotations"}
        for cat in doc["categories"]:
            assert cat["supercategory"] == ""
        for image in doc["images"]:
            assert {"license", "flickr_url", "coco_url", "date_captured"} <= set(image)
            assert (sample_dir / export / "images" / image["file_name"]).is_file()
            assert image["width"] <= 320 and image["height"] <= 320
            names.add(image["file_name"])
        for ann in doc["annotations"]:
            assert ann["attributes"] == {"occluded": False}
    assert 24 <= len(names) <= 40


def test_every_annotation_decodes_inside_its_image(sample_dir):
    for export in EXPORTS:
        doc = _doc(sample_dir, export)
        images = {im["id"]: im for im in doc["images"]}
        cat_ids = {c["id"] for c in doc["categories"]}
        for ann in doc["annotations"]:
            image = images[ann["image_id"]]
            h, w = image["height"], image["width"]
            assert ann["category_id"] in cat_ids
            seg = ann["segmentation"]
            if isinstance(seg, list):
                for part in seg:
                    assert len(part) >= 6 and len(part) % 2 == 0
                    assert all(0 <= x <= w for x in part[0::2]) and all(0 <= y <= h for y in part[1::2])
            else:
                assert seg["size"] == [h, w]
                if isinstance(seg["counts"], list):
                    assert sum(seg["counts"]) == h * w
            mask = _decode(seg, h, w)
            assert mask.shape == (h, w) and mask.sum() > 20, (export, ann["id"])


def test_category_ids_differ_between_exports(sample_dir):
    materials = {c["name"]: c["id"] for c in _doc(sample_dir, EXPORTS[0])["categories"]}
    machines = {c["name"]: c["id"] for c in _doc(sample_dir, EXPORTS[1])["categories"]}
    common = set(materials) & set(machines)
    assert common >= {"floor", "wall", "sky", "ground"}
    assert any(materials[n] != machines[n] for n in common)


def test_shared_image_split_between_exports(sample_dir):
    labels = {}
    for export in EXPORTS:
        doc = _doc(sample_dir, export)
        names = {c["id"]: c["name"] for c in doc["categories"]}
        (image,) = [im for im in doc["images"] if im["file_name"] == SHARED_FILE_NAME]
        labels[export] = (
            (image["width"], image["height"]),
            {names[a["category_id"]] for a in doc["annotations"] if a["image_id"] == image["id"]},
        )
    (size_a, labels_a), (size_b, labels_b) = labels.values()
    assert size_a == size_b
    assert labels_b == {"excavator"} and "excavator" not in labels_a and "brick" in labels_a
    assert (sample_dir / EXPORTS[0] / "images" / SHARED_FILE_NAME).read_bytes() == (
        sample_dir / EXPORTS[1] / "images" / SHARED_FILE_NAME
    ).read_bytes()


def test_crowd_rle_brush_masks(sample_dir):
    kinds = set()
    for export in EXPORTS:
        for ann in _doc(sample_dir, export)["annotations"]:
            if isinstance(ann["segmentation"], dict):
                assert ann["iscrowd"] == 1
                kinds.add(type(ann["segmentation"]["counts"]).__name__)
            else:
                assert ann["iscrowd"] == 0
    assert kinds == {"list", "str"}


def test_uncompressed_rle_matches_pycocotools():
    rng = np.random.default_rng(0)
    for first in (0, 1):
        mask = rng.random((7, 5)) < 0.5
        mask[0, 0] = bool(first)
        rle = uncompressed_rle(mask)
        assert (rle["counts"][0] == 0) == bool(first)
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, 7, 5)).astype(bool)
        assert np.array_equal(decoded, mask)


def test_cvat_mask_rle_round_trips_through_the_xml_reader_decoder():
    rng = np.random.default_rng(1)
    for first in (0, 1):
        mask = rng.random((6, 9)) < 0.5
        mask[0, 0] = bool(first)
        runs = cvat_mask_rle(mask)
        assert (runs[0] == 0) == bool(first) and sum(runs) == mask.size
        assert np.array_equal(decode_cvat_rle(runs, 9, 6), mask)
    # Row-major (CVAT) and column-major (COCO) runs differ on a non-symmetric mask.
    assert cvat_mask_rle(mask) != uncompressed_rle(mask)["counts"]


def test_exif_rotated_image_is_upright_after_transpose(sample_dir):
    doc = _doc(sample_dir, EXPORTS[0])
    found = 0
    for image in doc["images"]:
        with Image.open(sample_dir / EXPORTS[0] / "images" / image["file_name"]) as pil:
            orientation = pil.getexif().get(EXIF_ORIENTATION_TAG, 1)
            if orientation == 1:
                assert pil.size == (image["width"], image["height"])
                continue
            found += 1
            assert pil.size == (image["height"], image["width"])  # stored rotated
            assert ImageOps.exif_transpose(pil).size == (image["width"], image["height"])
    assert found == 1


def test_upright_pixels_match_annotations(sample_dir):
    """The rotated image's upright pixels agree with its polygons: sky pixels are blue there."""
    doc = _doc(sample_dir, EXPORTS[0])
    names = {c["id"]: c["name"] for c in doc["categories"]}
    (image,) = [im for im in doc["images"] if im["file_name"] == "materials_005.jpg"]
    with Image.open(sample_dir / EXPORTS[0] / "images" / image["file_name"]) as pil:
        rgb = np.asarray(ImageOps.exif_transpose(pil).convert("RGB")).astype(int)
    for ann in doc["annotations"]:
        if ann["image_id"] == image["id"] and names[ann["category_id"]] in ("brick", "tile", "pipe"):
            mask = _decode(ann["segmentation"], image["height"], image["width"])
            mean = rgb[mask].mean(axis=0)
            background = rgb[~mask].mean(axis=0)
            assert np.abs(mean - background).sum() > 60


def test_grayscale_and_empty_images(sample_dir):
    doc = _doc(sample_dir, EXPORTS[0])
    modes = {}
    for image in doc["images"]:
        with Image.open(sample_dir / EXPORTS[0] / "images" / image["file_name"]) as pil:
            modes[image["file_name"]] = pil.mode
    assert "L" in modes.values()
    annotated = {a["image_id"] for a in doc["annotations"]}
    assert any(im["id"] not in annotated for im in doc["images"])


def test_wrong_boxes_overlap_void_and_multipart(sample_dir):
    wrong = multipart = 0
    for export in EXPORTS:
        doc = _doc(sample_dir, export)
        images = {im["id"]: im for im in doc["images"]}
        for ann in doc["annotations"]:
            im = images[ann["image_id"]]
            mask = _decode(ann["segmentation"], im["height"], im["width"])
            ys, xs = np.nonzero(mask)
            true_box = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            if (
                np.abs(np.array(ann["bbox"]) - true_box).max() > 2
                or abs(ann["area"] - mask.sum()) > 0.05 * mask.sum()
            ):
                wrong += 1
            multipart += isinstance(ann["segmentation"], list) and len(ann["segmentation"]) > 1
    assert wrong >= 5 and multipart >= 5

    doc = _doc(sample_dir, EXPORTS[0])
    names = {c["id"]: c["name"] for c in doc["categories"]}
    by_file = {im["file_name"]: im for im in doc["images"]}

    # Overlap: a small pipe listed before the large tile polygon that covers it.
    im = by_file["materials_001.jpg"]
    anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
    masks = [(names[a["category_id"]], _decode(a["segmentation"], im["height"], im["width"])) for a in anns]
    pipe_i = next(i for i, (n, m) in enumerate(masks) if n == "pipe" and (m & masks[-1][1]).any())
    assert masks[-1][0] == "tile" and pipe_i < len(masks) - 1
    pipe, tile = masks[pipe_i][1], masks[-1][1]
    assert (pipe & tile).sum() == pipe.sum() and pipe.sum() < tile.sum()

    # Void: some pixels of materials_004 belong to no annotation.
    im = by_file["materials_004.jpg"]
    union = np.zeros((im["height"], im["width"]), dtype=bool)
    for a in doc["annotations"]:
        if a["image_id"] == im["id"]:
            union |= _decode(a["segmentation"], im["height"], im["width"])
    assert (~union).sum() > 0.02 * union.size


def test_every_class_has_enough_images_for_a_quarter_val_split(sample_dir):
    per_class: dict[str, set[str]] = {}
    for export in EXPORTS:
        doc = _doc(sample_dir, export)
        names = {c["id"]: c["name"] for c in doc["categories"]}
        files = {im["id"]: im["file_name"] for im in doc["images"]}
        for a in doc["annotations"]:
            per_class.setdefault(names[a["category_id"]], set()).add(files[a["image_id"]])
    assert set(per_class) == {"floor", "wall", "sky", "ground", "brick", "pipe", "tile", "excavator"}
    assert min(len(v) for v in per_class.values()) >= 4


def test_synthetic_mode(tmp_path):
    out = tmp_path / "synth"
    argv = ["--out", str(out), "--num-images", "5", "--exports", "2", "--size", "96x64", "--seed", "7"]
    assert make_sample.main([*argv, "--max-things", "2"]) == 0
    docs = [json.loads(p.read_text()) for p in sorted(out.glob("*/annotations/instances_default.json"))]
    assert [len(d["images"]) for d in docs] == [3, 2]
    assert docs[0]["categories"] != docs[1]["categories"]
    for doc in docs:
        assert all((im["width"], im["height"]) == (96, 64) for im in doc["images"])
        per_image: dict[int, int] = {}
        names = {c["id"]: c["name"] for c in doc["categories"]}
        for a in doc["annotations"]:
            assert a["iscrowd"] == 0
            if names[a["category_id"]] not in ("floor", "wall", "sky", "ground"):
                per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
        assert per_image and max(per_image.values()) <= 2
    # Existing output without --overwrite: an error, nothing changed.
    before = _files(out)
    assert make_sample.main(argv) == 2
    assert _files(out) == before
    with pytest.raises(SystemExit):
        make_sample.main(["--out", str(tmp_path / "x"), "--size", "12"])
    assert make_sample.main(["--out", str(tmp_path / "x"), "--num-images", "2", "--things", "crane"]) == 2
    assert make_sample.main(["--out", str(tmp_path / "x"), "--format", "xml"]) == 2  # bundled: COCO only
    assert not (tmp_path / "x").exists()


def test_synthetic_mode_xml_format(tmp_path):
    """``--format xml`` writes the same task as CVAT for images 1.1: same images, same shapes."""
    argv = ["--num-images", "3", "--exports", "1", "--size", "96x64", "--seed", "5", "--things", "excavator"]
    assert make_sample.main(["--out", str(tmp_path / "coco"), *argv]) == 0
    assert make_sample.main(["--out", str(tmp_path / "xml"), *argv, "--format", "xml"]) == 0
    (coco,) = [
        json.loads(p.read_text()) for p in (tmp_path / "coco").glob("*/annotations/instances_default.json")
    ]
    (xml_path,) = (tmp_path / "xml").glob("*/annotations.xml")
    export = read_cvat_xml(xml_path)
    assert export.labels == [c["name"] for c in coco["categories"]]
    assert [im.file_name for im in export.images] == [im["file_name"] for im in coco["images"]]
    for image in export.images:
        assert (xml_path.parent / "images" / image.file_name).is_file()
    parts = sum(len(a["segmentation"]) for a in coco["annotations"])
    root = ET.parse(xml_path).getroot()
    assert len(list(root.iter("polygon"))) == parts  # one <polygon> per part
    # ... read back as one shape per annotation (the reader joins the parts of a group)
    assert sum(len(im.shapes) for im in export.images) == len(coco["annotations"])
    # The excavator's parts share a group: one group per excavator, none on the stuff bands.
    groups = [int(p.get("group_id")) for p in root.iter("polygon") if p.get("label") == "excavator"]
    excavators = sum(len(a["segmentation"]) > 1 for a in coco["annotations"])
    assert excavators >= 3 and len(set(groups)) == excavators and len(groups) == 3 * excavators
    assert all(p.get("group_id") is None for p in root.iter("polygon") if p.get("label") != "excavator")


def test_make_sample_keeps_the_names_bench_learning_imports():
    from dataset_scripts.make_sample import STUFF_LABELS, synthetic_plans, write_dataset

    assert STUFF_LABELS == ("floor", "wall", "sky", "ground")
    assert callable(synthetic_plans) and callable(write_dataset)


def test_synthetic_mode_thing_subset(tmp_path):
    out = tmp_path / "two"
    argv = [
        "--out",
        str(out),
        "--num-images",
        "4",
        "--exports",
        "1",
        "--size",
        "80x64",
        "--things",
        "pipe",
        "tile",
    ]
    assert make_sample.main([*argv, "--min-things", "2", "--max-things", "2"]) == 0
    (doc,) = [json.loads(p.read_text()) for p in out.glob("*/annotations/instances_default.json")]
    assert [c["name"] for c in doc["categories"]] == ["floor", "wall", "sky", "ground", "pipe", "tile"]
    things = [a for a in doc["annotations"] if a["category_id"] > 4]
    assert len(things) == 8
