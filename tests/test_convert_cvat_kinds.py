"""Issue 18: every kind of CVAT export converts: project exports, video tracks, ellipses, empty labels.

The exports are written as CVAT writes them (see `tests.export_builders`: project XML with
``subset``/``task_id`` per image, ``instances_<Subset>.json`` + ``images/<Subset>/``, video tracks
with ``frame``/``outside``/``keyframe`` and frame pictures ``frame_000012.PNG``), and the output is
checked pixel for pixel against masks computed here independently of the converter.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_scripts.conversion.report import BOX_ONLY, EMPTY_LABEL, RENAMED, UNANNOTATED, UNSUPPORTED
from dataset_scripts.panoptic_format import read_panoptic_png
from dataset_scripts.sample.rle import cvat_mask_rle
from tests.export_builders import (
    check_panoptic_folder,
    coco_project_export,
    no_output_left,
    rect,
    run_cli,
    track_shape,
    video_export,
    write_frames,
    write_picture,
    xml_export,
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


# ----------------------------------------------------------------------------- ellipses


def ellipse_mask(cx: float, cy: float, rx: float, ry: float, rotation: float, shape=(H, W)) -> np.ndarray:
    """Pixels whose centre (col + 0.5, row + 0.5) is inside the ellipse, tested one pixel at a time."""
    theta = math.radians(rotation)
    mask = np.zeros(shape, bool)
    for row in range(shape[0]):
        for col in range(shape[1]):
            x, y = col + 0.5 - cx, row + 0.5 - cy
            u = x * math.cos(theta) + y * math.sin(theta)
            v = -x * math.sin(theta) + y * math.cos(theta)
            mask[row, col] = (u / rx) ** 2 + (v / ry) ** 2 <= 1
    return mask


def ellipse(label: str, cx, cy, rx, ry, rotation=None, z_order=0) -> str:
    """An ``<ellipse>`` as CVAT writes it (two decimals; ``rotation`` only when not 0)."""
    turn = f' rotation="{rotation:.2f}"' if rotation else ""
    return (
        f'<ellipse label="{label}" source="manual" occluded="0" cx="{cx:.2f}" cy="{cy:.2f}" '
        f'rx="{rx:.2f}" ry="{ry:.2f}"{turn} z_order="{z_order}"></ellipse>'
    )


ELLIPSES = [  # (cx, cy, rx, ry, rotation): axis-aligned, rotated, thin and tilted, half outside
    (8.0, 6.0, 5.0, 3.0, 0.0),
    (7.3, 5.6, 6.2, 2.7, 30.0),
    (8.5, 6.5, 7.0, 1.2, 123.45),
    (1.0, 10.0, 4.0, 3.0, 300.0),
]


@pytest.mark.parametrize("geometry", ELLIPSES)
def test_ellipses_are_rasterised_at_pixel_centres(tmp_path, geometry, caplog):
    export = tmp_path / "export"
    write_picture(export / "images" / "a.png")
    xml_export(export, [("0", "a.png", W, H, ellipse("car", *geometry))])
    out, docs, report = convert(tmp_path, caplog, export, extra=["--val-ratio", "0"])
    _, _, category, ids = outputs(out, docs)["a.png"]
    np.testing.assert_array_equal(category == ids["car"], ellipse_mask(*geometry))
    assert (category == ids["car"]).sum() > 0


def test_an_ellipse_and_a_polygon_of_the_same_box_follow_one_pixel_convention(tmp_path, caplog):
    """Filled at pixel centres: an ellipse inscribed in a box never leaves that box's polygon pixels."""
    export = tmp_path / "export"
    write_picture(export / "images" / "a.png")
    write_picture(export / "images" / "b.png")
    xml_export(
        export,
        [
            ("0", "a.png", W, H, ellipse("car", 8, 6, 6, 4)),
            ("1", "b.png", W, H, polygon("car", (2, 2, 14, 10))),
        ],
    )
    out, docs, _ = convert(tmp_path, caplog, export, extra=["--val-ratio", "0"])
    written = outputs(out, docs)
    inside_ellipse = written["a.png"][2] > 0
    inside_box = written["b.png"][2] > 0
    np.testing.assert_array_equal(inside_box, box_mask((2, 2, 14, 10)))
    assert not (inside_ellipse & ~inside_box).any()
    # The ellipse touches the box's middle row and column at the box's own edge pixels.
    assert inside_ellipse[5, 2] and inside_ellipse[5, 13] and inside_ellipse[2, 7] and inside_ellipse[9, 7]


def test_an_export_of_only_ellipses_converts(tmp_path, caplog):
    """The issue's case: an export whose objects are all ellipses used to end with 'no image left'."""
    export = tmp_path / "export"
    for name in ("a.png", "b.png"):
        write_picture(export / "images" / name)
    xml_export(
        export,
        [
            ("0", "a.png", W, H, ellipse("car", 5, 5, 3, 2) + ellipse("road", 8, 9, 8, 3, z_order=-1)),
            ("1", "b.png", W, H, ellipse("car", 10, 6, 4, 4, 45)),
        ],
    )
    out, docs, report = convert(tmp_path, caplog, export)
    assert report["images"] == 2
    _, _, category, ids = outputs(out, docs)["a.png"]
    want = np.zeros((H, W), np.int64)
    want[ellipse_mask(8, 9, 8, 3, 0)] = ids["road"]
    want[ellipse_mask(5, 5, 3, 2, 0)] = ids["car"]  # higher z_order on top
    np.testing.assert_array_equal(category, want)


def test_nothing_to_convert_names_the_file_and_what_it_holds(tmp_path, caplog):
    export = tmp_path / "export"
    write_picture(export / "images" / "a.png")
    xml_export(export, [("0", "a.png", W, H, '<polyline label="car" points="0,0;5,5" z_order="0"/>')])
    error = refused(tmp_path, caplog, export)
    assert "annotations.xml: no image left to convert" in error and "1 polyline" in error


@pytest.mark.parametrize(("attribute", "value"), [("rx", "nan"), ("ry", "-2"), ("rotation", "inf"), ("cx", "x")])
def test_bad_ellipse_values_are_one_line_errors(tmp_path, attribute, value, caplog):
    export = tmp_path / "export"
    write_picture(export / "images" / "a.png")
    shape = re.sub(f'{attribute}="[^"]*"', f'{attribute}="{value}"', ellipse("car", 5, 5, 3, 2, 10))
    xml_export(export, [("0", "a.png", W, H, shape)])
    error = refused(tmp_path, caplog, export)
    assert "annotations.xml: image 0 (a.png) ellipse #0" in error and attribute in error


# ----------------------------------------------------------------------------- video tracks


def car_box(frame: int) -> tuple[int, int, int, int]:
    """The tracked car moves one pixel right per frame."""
    return (1 + frame, 2, 6 + frame, 7)


BRUSH = np.zeros((3, 4), bool)
BRUSH[0, 1:] = BRUSH[2, :2] = True
BRUSH_AT = (9, 1)  # left, top


def tracked_video(export: Path, frames: int = 10, **kwargs) -> Path:
    """Polygon, ellipse, mask, box and points tracks of one video, written as CVAT writes them.

    * car polygon on frames 0-5: keyframes 0 and 5, the interpolated frames 1-4 (``keyframe="0"``)
      written too, and ``outside="1"`` on frame 6;
    * road ellipse on frames 2-3, outside on 4; a car brush mask on frame 8, outside on 9;
    * a box track on every frame and a points track on frame 1 (no area: reported, skipped).
    """
    poly = "".join(
        track_shape("polygon", f, f'points="{points(*car_box(f))}"', keyframe=int(f in (0, 5))) for f in range(6)
    ) + track_shape("polygon", 6, f'points="{points(*car_box(6))}"', outside=1)
    oval = (
        track_shape("ellipse", 2, 'cx="8.00" cy="9.00" rx="7.00" ry="2.50"', z_order=-1)
        + track_shape("ellipse", 3, 'cx="8.00" cy="9.00" rx="7.00" ry="2.50" rotation="10.00"', keyframe=0, z_order=-1)
        + track_shape("ellipse", 4, 'cx="8.00" cy="9.00" rx="7.00" ry="2.50"', outside=1, z_order=-1)
    )
    rle = ", ".join(str(v) for v in cvat_mask_rle(BRUSH))
    brush = f'rle="{rle}" left="{BRUSH_AT[0]}" top="{BRUSH_AT[1]}" width="4" height="3"'
    mask = track_shape("mask", 8, brush) + track_shape("mask", 9, brush, outside=1)
    boxes = "".join(track_shape("box", f, 'xtl="1.00" ytl="1.00" xbr="4.00" ybr="4.00"') for f in range(frames))
    dots = track_shape("points", 1, 'points="1.00,1.00"')
    attrs = kwargs.pop("attrs", "")
    return video_export(
        export,
        [
            (f'id="0" {attrs}', "car", poly),
            (f'id="1" {attrs}', "road", oval),
            (f'id="2" {attrs}', "car", mask),
            (f'id="3" {attrs}', "sign", boxes),
            (f'id="4" {attrs}', "sign", dots),
        ],
        frames=frames,
        labels=("car", "road", "sign"),
        **kwargs,
    )


def expected_frame(frame: int, ids: dict[str, int]) -> np.ndarray:
    want = np.zeros((H, W), np.int64)
    if frame in (2, 3):
        want[ellipse_mask(8, 9, 7, 2.5, 10 if frame == 3 else 0)] = ids["road"]
    if frame <= 5:
        want[box_mask(car_box(frame))] = ids["car"]
    if frame == 8:
        left, top = BRUSH_AT
        want[top : top + 3, left : left + 4][BRUSH] = ids["car"]
    return want


def test_video_tracks_become_one_image_per_frame_with_a_visible_area_shape(tmp_path, caplog):
    export = tracked_video(tmp_path / "video")
    pixels = write_frames(export / "images", range(10))
    out, docs, report = convert(tmp_path, caplog, export)
    written = outputs(out, docs)
    assert sorted(written) == [f"frame_{f:06d}.PNG" for f in (0, 1, 2, 3, 4, 5, 8)]
    for frame in (0, 1, 2, 3, 4, 5, 8):
        _, picture, category, ids = written[f"frame_{frame:06d}.PNG"]
        np.testing.assert_array_equal(picture, pixels[frame])
        np.testing.assert_array_equal(category, expected_frame(frame, ids), err_msg=f"frame {frame}")
    codes = [w["code"] for w in report["warnings"]]
    assert codes.count(BOX_ONLY) == 7 and codes.count(UNSUPPORTED) == 1
    # Frames 6, 7 and 9 hold only the box: reported, not converted.
    assert sorted(w["image"] for w in report["warnings"] if w["code"] == UNANNOTATED) == [
        f"frame_{f:06d}.PNG" for f in (6, 7, 9)
    ]
    assert "contiguous frame ranges" in report["split_method"]


def test_frame_step_keeps_every_nth_frame(tmp_path, caplog):
    export = tracked_video(tmp_path / "video")
    write_frames(export / "images", range(10))
    _, docs, _ = convert(tmp_path, caplog, export, extra=["--frame-step", "2"])
    assert sorted(img["file_name"] for doc in docs.values() for img in doc["images"]) == [
        f"frame_{f:06d}.PNG" for f in (0, 2, 4, 8)
    ]


def test_frame_step_counts_in_the_tasks_frame_steps(tmp_path, caplog):
    """A task made with ``step=3`` numbers its frames 0, 3, 6...: every 2nd of those is 0, 6, 12."""
    export = video_export(
        tmp_path / "video",
        [('id="0"', "car", "".join(track_shape("polygon", f, f'points="{points(1, 1, 5, 5)}"') for f in range(0, 15, 3)))],
        frames=15,
        frame_filter="step=3",
    )
    write_frames(export / "images", range(0, 15, 3))
    _, docs, _ = convert(tmp_path, caplog, export, extra=["--frame-step", "2"])
    assert sorted(img["file_name"] for doc in docs.values() for img in doc["images"]) == [
        f"frame_{f:06d}.PNG" for f in (0, 6, 12)
    ]


def long_video(export: Path, frames: int = 40) -> Path:
    shapes = "".join(track_shape("polygon", f, f'points="{points(1, 1, 5 + f % 3, 5)}"', keyframe=0) for f in range(frames))
    video_export(export, [('id="0"', "car", shapes)], frames=frames)
    write_frames(export / "images", range(frames))
    return export


def test_video_frames_are_split_in_contiguous_ranges(tmp_path, caplog):
    export = long_video(tmp_path / "video")
    out, docs, report = convert(tmp_path, caplog, export, extra=["--val-ratio", "0.2", "--test-ratio", "0.2"])
    split_of = {int(name[6:12]): split for name, (split, *_) in outputs(out, docs).items()}
    # 40 frames in 10 ranges of 4: each range lies in one split, 2 ranges each in val and test.
    for start in range(0, 40, 4):
        assert len({split_of[f] for f in range(start, start + 4)}) == 1, split_of
    assert report["splits"] == {"train": 24, "val": 8, "test": 8}
    assert "contiguous frame ranges" in report["split_method"]


def test_video_frames_can_be_split_one_by_one(tmp_path, caplog):
    export = long_video(tmp_path / "video")
    out, docs, report = convert(tmp_path, caplog, export, extra=["--video-split", "random"])
    split_of = {int(name[6:12]): split for name, (split, *_) in outputs(out, docs).items()}
    assert report["splits"] == {"train": 32, "val": 8}
    runs = sum(1 for f in range(1, 40) if split_of[f] != split_of[f - 1])
    assert runs > 4  # a seeded shuffle, not ranges
    assert "one by one" in report["split_method"]


def test_project_video_export_finds_frames_in_subset_folders(tmp_path, caplog):
    export = tmp_path / "video"
    shapes = "".join(track_shape("polygon", f, f'points="{points(*car_box(f))}"') for f in range(3))
    video_export(
        export,
        [
            ('id="0" task_id="5" subset="Train"', "car", shapes),
            ('id="1" task_id="6" subset="Test"', "car", shapes),
        ],
        frames=3,
        project_tasks=[("5", "Train"), ("6", "Test")],
    )
    train = write_frames(export / "images" / "Train", range(3))
    test = {f: p[::-1].copy() for f, p in train.items()}  # other pixels under the same names
    for frame, array in test.items():
        (export / "images" / "Test").mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(export / "images" / "Test" / f"frame_{frame:06d}.PNG", format="PNG")
    out, docs, report = convert(tmp_path, caplog, export, extra=["--splits-from-subsets"])
    written = outputs(out, docs)
    for subset, frames, split in (("Train", train, "train"), ("Test", test, "test")):
        for frame, array in frames.items():
            got_split, picture, category, ids = written[f"{subset}__frame_{frame:06d}.PNG"]
            assert got_split == split
            np.testing.assert_array_equal(picture, array)
            np.testing.assert_array_equal(category, box_mask(car_box(frame)) * ids["car"])


def test_frames_of_older_cvat_as_jpg_are_found(tmp_path, caplog):
    export = video_export(tmp_path / "video", [('id="0"', "car", track_shape("polygon", 0, f'points="{points(1, 1, 5, 5)}"'))])
    write_frames(export / "images", [0], ext=".jpg")
    _, docs, _ = convert(tmp_path, caplog, export)
    assert [img["file_name"] for doc in docs.values() for img in doc["images"]] == ["frame_000000.jpg"]


def test_video_of_an_image_task_is_refused(tmp_path, caplog):
    export = video_export(tmp_path / "video", [('id="0"', "car", track_shape("polygon", 0, f'points="{points(1, 1, 5, 5)}"'))])
    text = (export / "annotations.xml").read_text().replace("<mode>interpolation</mode>", "<mode>annotation</mode>")
    (export / "annotations.xml").write_text(text)
    error = refused(tmp_path, caplog, export)
    assert "annotations.xml: track 0: a 'CVAT for video' export of an image task" in error


# ----------------------------------------------------------------------------- empty labels


def blank_label_exports(tmp_path: Path, label: str) -> dict[str, Path]:
    """The same blank-labelled polygon in an XML task, a COCO task and a video export."""
    xml = tmp_path / "xml"
    write_picture(xml / "images" / "a.png")
    write_picture(xml / "images" / "b.png")
    xml_export(
        xml,
        [
            ("0", "a.png", W, H, polygon("car", CAR_A)),
            ("1", "b.png", W, H, polygon("car", CAR_B) + polygon(label, CAR_A)),
        ],
    )
    coco = tmp_path / "coco"
    project_pictures(coco)
    coco_project(coco)
    doc_path = coco / "annotations" / "instances_Train.json"
    doc = json.loads(doc_path.read_text())
    doc["categories"].append({"id": 3, "name": label})
    doc["annotations"].append({"id": 9, "image_id": 2, "category_id": 3, "segmentation": [rect(*CAR_A)]})
    doc_path.write_text(json.dumps(doc))
    video = video_export(
        tmp_path / "video",
        [
            ('id="0"', "car", track_shape("polygon", 0, f'points="{points(*CAR_A)}"')),
            ('id="7"', label, track_shape("polygon", 1, f'points="{points(*CAR_A)}"')),
        ],
    )
    write_frames(video / "images", [0, 1])
    return {"xml": xml, "coco": coco, "video": video}


WHERE = {
    "xml": "annotations.xml: image 1 (b.png), annotation 1/polygon#1: empty label",
    "coco": "instances_Train.json: image 2 (b.png), annotation 9: empty label",
    "video": "annotations.xml: image 1 (frame_000001.PNG), annotation 1/track7/polygon: empty label",
}


@pytest.mark.parametrize("label", ["", "  "])
@pytest.mark.parametrize("layout", ["xml", "coco", "video"])
def test_an_empty_label_is_refused_naming_file_image_and_annotation(tmp_path, layout, label, caplog):
    export = blank_label_exports(tmp_path, label)[layout]
    error = refused(tmp_path, caplog, export)
    assert WHERE[layout] in error and "--skip-empty-labels" in error


@pytest.mark.parametrize("layout", ["xml", "coco", "video"])
def test_empty_labels_can_be_skipped_and_are_reported(tmp_path, layout, caplog):
    export = blank_label_exports(tmp_path, " ")[layout]
    out, docs, report = convert(tmp_path, caplog, export, extra=["--skip-empty-labels"])
    names = {cat["name"] for doc in docs.values() for cat in doc["categories"]}
    assert names == {"car", "road"} if layout == "coco" else names == {"car"}
    skipped = [w for w in report["warnings"] if w["code"] == EMPTY_LABEL]
    assert len(skipped) == 1 and WHERE[layout].split(", annotation ")[1].startswith(skipped[0]["annotation_id"])
    if layout == "video":  # frame 1 held only the blank-labelled shape
        assert [img["file_name"] for doc in docs.values() for img in doc["images"]] == ["frame_000000.PNG"]


def test_a_video_task_exported_as_cvat_for_images_finds_its_frames(tmp_path, caplog):
    """"CVAT for images" of a video task names its images ``frame_000000`` (no extension)."""
    export = tmp_path / "export"
    pixels = write_frames(export / "images", [0, 1])
    xml_export(export, [(str(f), f"frame_{f:06d}", W, H, polygon("car", car_box(f))) for f in (0, 1)])
    out, docs, _ = convert(tmp_path, caplog, export)
    written = outputs(out, docs)
    assert sorted(written) == ["frame_000000.PNG", "frame_000001.PNG"]
    for frame in (0, 1):
        _, picture, category, ids = written[f"frame_{frame:06d}.PNG"]
        np.testing.assert_array_equal(picture, pixels[frame])
        np.testing.assert_array_equal(category, box_mask(car_box(frame)) * ids["car"])


def test_subset_splits_of_a_task_export_say_it_has_no_subset(tmp_path, caplog):
    export = tmp_path / "export"
    write_picture(export / "images" / "a.png")
    xml_export(export, [("0", "a.png", W, H, polygon("car", CAR_A))])
    error = refused(tmp_path, caplog, export, extra=["--splits-from-subsets"])
    assert "(no subset: not a project export)" in error and "annotations.xml" in error
