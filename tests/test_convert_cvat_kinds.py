"""Issue 18: every kind of CVAT export converts: project exports, video tracks, ellipses, empty labels.

The exports are written as CVAT writes them (see `tests.export_builders`: project XML with
``subset``/``task_id`` per image, ``instances_<Subset>.json`` + ``images/<Subset>/``, video tracks
with ``frame``/``outside``/``keyframe`` and frame pictures ``frame_000012.PNG``), and the output is
checked pixel for pixel against masks computed here independently of the converter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_scripts.conversion.report import RENAMED
from dataset_scripts.panoptic_format import read_panoptic_png
from tests.export_builders import (
    check_panoptic_folder,
    coco_project_export,
    no_output_left,
    rect,
    run_cli,
    write_picture,
    xml_project_export,
)

W, H = 16, 12


def points(x0, y0, x1, y1) -> str:
    """CVAT's ``points`` of an axis-aligned rectangle polygon."""
    flat = rect(x0, y0, x1, y1)
    return ";".join(f"{x:.2f},{y:.2f}" for x, y in zip(flat[::2], flat[1::2], strict=True))


def polygon(label: str, box: tuple[int, int, int, int], z_order: int = 0) -> str:
    return f'<polygon label="{label}" source="manual" occluded="0" points="{points(*box)}" z_order="{z_order}"></polygon>'


def box_mask(box: tuple[int, int, int, int]) -> np.ndarray:
    """Pixels of an integer rectangle polygon: columns x0..x1-1, rows y0..y1-1."""
    x0, y0, x1, y1 = box
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def convert(tmp_path: Path, caplog, *exports: Path, extra=()) -> tuple[Path, dict, dict]:
    out = tmp_path / "out"
    argv = [arg for export in exports for arg in ("--cvat", export)]
    code, errors = run_cli([*argv, "--out", out, *extra], caplog)
    assert code == 0, errors
    docs = check_panoptic_folder(out)
    return out, docs, json.loads((out / "report.json").read_text())


def refused(tmp_path: Path, caplog, *exports: Path, extra=()) -> str:
    out = tmp_path / "out"
    argv = [arg for export in exports for arg in ("--cvat", export)]
    code, errors = run_cli([*argv, "--out", out, *extra], caplog)
    assert code == 2 and len(errors) == 1 and "\n" not in errors[0], errors
    assert no_output_left(tmp_path, out)
    return errors[0]


def outputs(out: Path, docs: dict) -> dict[str, tuple[str, np.ndarray, np.ndarray, dict]]:
    """Per output file name: split, picture pixels, category id per pixel (0 void), categories by name."""
    result = {}
    for split, doc in docs.items():
        names = {cat["id"]: cat["name"] for cat in doc["categories"]}
        images = {img["id"]: img for img in doc["images"]}
        for ann in doc["annotations"]:
            name = images[ann["image_id"]]["file_name"]
            ids = read_panoptic_png(out / "annotations" / f"panoptic_{split}" / ann["file_name"])
            category = np.zeros(ids.shape, np.int64)
            for seg in ann["segments_info"]:
                category[ids == seg["id"]] = seg["category_id"]
            with Image.open(out / split / name) as img:
                pixels = np.asarray(img.convert("RGB"))
            result[name] = (split, pixels, category, {v: k for k, v in names.items()})
    return result


# ----------------------------------------------------------------------------- project exports

CAR_A, ROAD_A, CAR_B = (2, 2, 10, 8), (0, 8, 16, 12), (5, 1, 9, 11)


def project_pictures(export: Path) -> dict[str, np.ndarray]:
    """Train/a.png, Train/b.png and Test/a.png: equal names in two subsets, different pixels."""
    return {
        "Train/a.png": write_picture(export / "images" / "Train" / "a.png", seed=1),
        "Train/b.png": write_picture(export / "images" / "Train" / "b.png", seed=2),
        "Test/a.png": write_picture(export / "images" / "Test" / "a.png", seed=3),
    }


def xml_project(export: Path) -> Path:
    return xml_project_export(
        export,
        [
            ("3", "Train", "0", "a.png", W, H, polygon("car", CAR_A) + polygon("road", ROAD_A)),
            ("3", "Train", "1", "b.png", W, H, polygon("car", CAR_B)),
            ("4", "Test", "0", "a.png", W, H, polygon("road", ROAD_A)),
        ],
    )


def coco_project(export: Path) -> Path:
    def ann(ann_id, image_id, category_id, box):
        return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": [rect(*box)],
                "iscrowd": 0, "bbox": [0, 0, 0, 0], "area": 0, "attributes": {"occluded": False}}

    def img(image_id, name):
        return {"id": image_id, "file_name": name, "width": W, "height": H}

    return coco_project_export(
        export,
        {
            "Train": ([img(1, "a.png"), img(2, "b.png")], [ann(1, 1, 1, CAR_A), ann(2, 1, 2, ROAD_A), ann(3, 2, 1, CAR_B)]),
            "Test": ([img(1, "a.png")], [ann(1, 1, 2, ROAD_A)]),
        },
    )


def check_project_output(out: Path, docs: dict, report: dict, pictures: dict[str, np.ndarray]) -> None:
    """Three images, each with its own subset's pixels and shapes; the equal names reported as renames."""
    # Every output name that is not the image's key is listed; equal names are also warned about.
    assert report["renamed_images"] == {
        "Test/a.png": "Test__a.png",
        "Train/a.png": "Train__a.png",
        "Train/b.png": "b.png",
    }
    assert len([w for w in report["warnings"] if w["code"] == RENAMED]) == 2
    written = outputs(out, docs)
    assert set(written) == {"Train__a.png", "b.png", "Test__a.png"}
    expected = {
        "Train__a.png": ("Train/a.png", {"car": CAR_A, "road": ROAD_A}),
        "b.png": ("Train/b.png", {"car": CAR_B}),
        "Test__a.png": ("Test/a.png", {"road": ROAD_A}),
    }
    for name, (key, shapes) in expected.items():
        _, pixels, category, ids = written[name]
        np.testing.assert_array_equal(pixels, pictures[key])
        want = np.zeros((H, W), np.int64)
        for label in ("road", "car"):  # things are painted over stuff; here no overlap but order anyway
            if label in shapes:
                want[box_mask(shapes[label])] = ids[label]
        np.testing.assert_array_equal(category, want)


@pytest.mark.parametrize("layout", ["xml", "coco"])
def test_project_export_keeps_equal_names_of_two_subsets_apart(tmp_path, layout, caplog):
    export = tmp_path / "project"
    pictures = project_pictures(export)
    (xml_project if layout == "xml" else coco_project)(export)
    out, docs, report = convert(tmp_path, caplog, export)
    check_project_output(out, docs, report, pictures)
    assert report["split_method"].startswith("seeded random")


def test_xml_and_coco_exports_of_one_project_merge(tmp_path, caplog):
    pictures = project_pictures(tmp_path / "xml")
    xml_project(tmp_path / "xml")
    project_pictures(tmp_path / "coco")
    coco_project(tmp_path / "coco")
    out, docs, report = convert(tmp_path, caplog, tmp_path / "xml", tmp_path / "coco", extra=["--overlap", "order"])
    check_project_output(out, docs, report, pictures)


@pytest.mark.parametrize("layout", ["xml", "coco"])
def test_subsets_are_the_splits_on_request(tmp_path, layout, caplog):
    export = tmp_path / "project"
    project_pictures(export)
    (xml_project if layout == "xml" else coco_project)(export)
    out, docs, report = convert(tmp_path, caplog, export, extra=["--splits-from-subsets"])
    splits = {name: split for name, (split, *_) in outputs(out, docs).items()}
    assert splits == {"Train__a.png": "train", "b.png": "train", "Test__a.png": "test"}
    assert report["split_method"] == "CVAT subsets (--splits-from-subsets)"


def test_subset_names_are_matched_case_insensitively(tmp_path, caplog):
    export = tmp_path / "project"
    for subset in ("TRAIN", "val", "Validation", "test"):
        write_picture(export / "images" / subset / f"{subset}.png")
    xml_project_export(
        export,
        [
            (str(i), subset, "0", f"{subset}.png", W, H, polygon("car", CAR_A))
            for i, subset in enumerate(("TRAIN", "val", "Validation", "test"))
        ],
    )
    out, docs, _ = convert(tmp_path, caplog, export, extra=["--splits-from-subsets"])
    splits = {name: split for name, (split, *_) in outputs(out, docs).items()}
    assert splits == {"TRAIN.png": "train", "val.png": "val", "Validation.png": "val", "test.png": "test"}


def test_unknown_subsets_are_an_error_naming_them(tmp_path, caplog):
    export = tmp_path / "project"
    write_picture(export / "images" / "Train" / "a.png")
    write_picture(export / "images" / "Extra" / "b.png")
    xml_project_export(
        export,
        [
            ("1", "Train", "0", "a.png", W, H, polygon("car", CAR_A)),
            ("2", "Extra", "0", "b.png", W, H, polygon("car", CAR_A)),
        ],
    )
    error = refused(tmp_path, caplog, export, extra=["--splits-from-subsets"])
    assert "'Extra'" in error and "annotations.xml" in error and "'Train'" not in error


def test_project_duplicate_id_within_one_task_is_still_refused(tmp_path, caplog):
    export = tmp_path / "project"
    write_picture(export / "images" / "Train" / "a.png")
    write_picture(export / "images" / "Train" / "b.png")
    xml_project_export(
        export,
        [
            ("3", "Train", "0", "a.png", W, H, polygon("car", CAR_A)),
            ("3", "Train", "0", "b.png", W, H, polygon("car", CAR_A)),
        ],
    )
    error = refused(tmp_path, caplog, export)
    assert "annotations.xml: image 0 of task 3 (b.png): duplicate image id" in error
