"""Issue 11: the converter never loses data silently and never crashes on bad input.

Every bad input is built in ``tmp_path``; the CLI must answer one ``error:`` line naming the file,
the image and the annotation, exit 2 and leave nothing behind (no output, no temporary folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_scripts import stuff_model
from dataset_scripts.conversion.report import OUT_OF_BOUNDS, RENAMED
from dataset_scripts.cvat.records import ConversionError
from dataset_scripts.cvat_to_panoptic import ConversionOptions, convert_exports
from dataset_scripts.panoptic_format import read_panoptic_png
from tests.export_builders import (
    check_panoptic_folder,
    coco_export,
    no_output_left,
    rect,
    run_cli,
    write_picture,
    xml_export,
)

W, H = 16, 12
REPO = Path(__file__).resolve().parents[1]


def ann(ann_id, image_id=1, category_id=1, segmentation=None):
    segmentation = segmentation if segmentation is not None else [rect(2, 2, 10, 8)]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": segmentation}


def image(image_id, file_name, width=W, height=H):
    return {"id": image_id, "file_name": file_name, "width": width, "height": height}


def one_image_coco(root: Path, annotations: list, file_name: str = "a.jpg") -> Path:
    write_picture(root / "images" / Path(file_name).name)
    return coco_export(root, [image(1, file_name)], annotations, [{"id": 1, "name": "car"}])


def assert_refused(tmp_path: Path, export: Path, caplog, *patterns: str, extra=()) -> str:
    """The CLI exits 2 with one error line containing every pattern, and writes nothing."""
    out = tmp_path / "out"
    code, errors = run_cli(["--cvat", export, "--out", out, *extra], caplog)
    assert code == 2, errors
    assert len(errors) == 1 and "\n" not in errors[0] and errors[0].startswith("error: "), errors
    for pattern in patterns:
        assert pattern in errors[0], (pattern, errors[0])
    assert "Traceback" not in caplog.text
    assert no_output_left(tmp_path, out)
    return errors[0]


# ----------------------------------------------------------------------------- silent data loss


@pytest.mark.parametrize("layout", ["coco", "xml"])
def test_same_base_name_in_two_folders_stays_two_images(tmp_path, layout, caplog):
    export = tmp_path / "export"
    first = write_picture(export / "images" / "cam1" / "0001.png", seed=1)
    second = write_picture(export / "images" / "cam2" / "0001.png", seed=2)
    if layout == "coco":
        coco_export(
            export,
            [image(1, "cam1/0001.png"), image(2, "cam2/0001.png")],
            [ann(1, 1, 1, [rect(0, 0, 4, 4)]), ann(2, 2, 1, [rect(8, 6, 16, 12)])],
        )
    else:
        xml_export(
            export,
            [
                ("0", "cam1/0001.png", W, H, '<polygon label="car" points="0,0;4,0;4,4;0,4"/>'),
                ("1", "cam2/0001.png", W, H, '<polygon label="car" points="8,6;16,6;16,12;8,12"/>'),
            ],
        )
    out = tmp_path / "out"
    code, errors = run_cli(["--cvat", export, "--out", out, "--val-ratio", "0"], caplog)
    assert code == 0 and not errors
    docs = check_panoptic_folder(out)
    names = sorted(img["file_name"] for img in docs["train"]["images"])
    assert names == ["cam1__0001.png", "cam2__0001.png"]
    for name, pixels in (("cam1__0001.png", first), ("cam2__0001.png", second)):
        np.testing.assert_array_equal(np.asarray(Image.open(out / "train" / name)), pixels)
    areas = {
        img["file_name"]: [s["bbox"] for s in a["segments_info"]]
        for img, a in zip(docs["train"]["images"], docs["train"]["annotations"], strict=True)
    }
    assert areas == {"cam1__0001.png": [[0, 0, 4, 4]], "cam2__0001.png": [[8, 6, 8, 6]]}
    report = json.loads((out / "report.json").read_text())
    assert report["renamed_images"] == {"cam1/0001.png": "cam1__0001.png", "cam2/0001.png": "cam2__0001.png"}
    assert report["warning_counts"][RENAMED] == 2
    assert "warnings: renamed_image 2" in caplog.text


def test_two_image_ids_with_the_same_file_name_are_refused(tmp_path, caplog):
    export = tmp_path / "export"
    write_picture(export / "images" / "a.jpg")
    coco_export(export, [image(1, "a.jpg"), image(2, "a.jpg")], [ann(1, 1), ann(2, 2)])
    assert_refused(
        tmp_path, export, caplog, "instances_default.json: image 2 (a.jpg): same picture as image 1"
    )


@pytest.mark.parametrize("layout", ["ids", "names"])
def test_xml_duplicate_image_ids_and_pictures_are_refused(tmp_path, layout, caplog):
    export = tmp_path / "export"
    write_picture(export / "images" / "a.jpg")
    write_picture(export / "images" / "b.jpg")
    poly = '<polygon label="car" points="0,0;4,0;4,4"/>'
    second = ("0", "b.jpg", W, H, poly) if layout == "ids" else ("1", "a.jpg", W, H, poly)
    xml_export(export, [("0", "a.jpg", W, H, poly), second])
    expected = (
        "image 0 (b.jpg): duplicate image id"
        if layout == "ids"
        else "image 1 (a.jpg): same picture as image 0"
    )
    assert_refused(tmp_path, export, caplog, "annotations.xml: " + expected)


def _compressed(mask: np.ndarray) -> str:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


@pytest.mark.parametrize("change", ["short", "long"])
def test_compressed_rle_of_the_wrong_length_is_refused(tmp_path, change, caplog):
    mask = np.zeros((H, W), bool)
    mask[2:6, 3:9] = True
    other = np.zeros((H - 2 if change == "short" else H + 2, W), bool)
    other[2:6, 3:9] = True
    counts = _compressed(other)  # a mask of another height, declared with this image's size
    rle = {"size": [H, W], "counts": counts}
    export = one_image_coco(tmp_path / "export", [ann(7, segmentation=rle)])
    pixels = "pixels" if change == "short" else ""
    assert_refused(
        tmp_path,
        export,
        caplog,
        "instances_default.json: image 1 (a.jpg), annotation 7: malformed RLE",
        pixels,
    )


def test_garbage_compressed_rle_is_refused(tmp_path, caplog):
    export = one_image_coco(
        tmp_path / "export", [ann(7, segmentation={"size": [H, W], "counts": "\x7f\x7f~~"})]
    )
    assert_refused(tmp_path, export, caplog, "annotation 7: malformed compressed RLE")


def _save_grey(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.mark.parametrize(
    ("pixels", "name"),
    [
        (np.linspace(0, 65535, W * H).astype(np.uint16).reshape(H, W), "a.png"),
        (np.linspace(0, 1, W * H).astype(np.float32).reshape(H, W), "a.tif"),
    ],
)
def test_16_bit_and_float_pictures_are_scaled_to_8_bits(tmp_path, pixels, name):
    export = tmp_path / "export"
    _save_grey(export / "images" / name, pixels)
    coco_export(export, [image(1, name)], [ann(1)])
    out = tmp_path / "out"
    convert_exports([export], out, ConversionOptions(val_ratio=0))
    written = np.asarray(Image.open(out / "train" / name).convert("RGB")).astype(int)
    scale = 65535 if pixels.dtype == np.uint16 else 1
    expected = np.rint(pixels.astype(np.float64) * 255 / scale)
    for channel in range(3):
        assert np.abs(written[..., channel] - expected).max() <= 1
    assert written.min() == 0 and written.max() == 255  # not clipped to one colour


def test_float_picture_out_of_range_is_refused(tmp_path, caplog):
    export = tmp_path / "export"
    _save_grey(export / "images" / "a.tif", np.full((H, W), 300.0, np.float32))
    coco_export(export, [image(1, "a.tif")], [ann(1)])
    assert_refused(tmp_path, export, caplog, "a.tif (image id 1 of", "outside [0, 1]")


# ----------------------------------------------------------------------------- crashes


@pytest.mark.parametrize("layout", ["coco", "xml"])
def test_non_finite_polygon_coordinates_are_refused(tmp_path, layout, caplog):
    export = tmp_path / "export"
    write_picture(export / "images" / "a.jpg")
    if layout == "coco":
        path = coco_export(export, [image(1, "a.jpg")], [ann(5)]) / "annotations" / "instances_default.json"
        path.write_text(path.read_text().replace("[2, 2, 10, 2,", "[NaN, 2, 10, 2,"))
        where = "instances_default.json: image 1 (a.jpg), annotation 5: polygon has a non-finite coordinate"
    else:
        xml_export(export, [("3", "a.jpg", W, H, '<polygon label="car" points="0,0;inf,0;4,4"/>')])
        where = "annotations.xml: image 3 (a.jpg) polygon #0: points have a non-finite coordinate"
    assert_refused(tmp_path, export, caplog, where)


def test_wrong_value_types_are_refused(tmp_path, caplog):
    for bad, message in [
        ([1], "annotation 5: category_id must be an integer, got list"),
        ("1", "annotation 5: unknown category_id '1'"),
        (None, "annotation 5: category_id must be an integer, got null"),
    ]:
        export = one_image_coco(tmp_path / "export", [ann(5, category_id=bad)])
        assert_refused(tmp_path, export, caplog, "instances_default.json: image 1 (a.jpg), " + message)
    export = one_image_coco(tmp_path / "export", [dict(ann(5), attributes=[1])])
    assert_refused(tmp_path, export, caplog, "annotation 5: attributes must be an object")
    export = coco_export(tmp_path / "export", [image([1], "a.jpg")], [])
    assert_refused(tmp_path, export, caplog, "malformed image entry")


_HUGE_POLYGON = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from dataset_scripts.cvat_to_panoptic import main
sys.exit(main(sys.argv[1:]))
"""


def _convert_under_memory_limit(export: Path, out: Path) -> subprocess.CompletedProcess:
    """Run the converter on `export` in a child process limited to 2 GB of address space."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    argv = ["--cvat", str(export), "--out", str(out), "--val-ratio", "0"]
    return subprocess.run(
        [sys.executable, "-c", _HUGE_POLYGON, *argv], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("far", [2e8, 1e12, -1e300])
def test_absurd_polygon_coordinates_are_clipped_within_2_gb(tmp_path, far):
    """A vertex far outside the image: converted (clipped) in < 2 GB of address space, no crash."""
    export = one_image_coco(tmp_path / "export", [ann(5, segmentation=[[2, 2, far, 6, 2, 10]])])
    out = tmp_path / "out"
    proc = _convert_under_memory_limit(export, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["warning_counts"] == {OUT_OF_BOUNDS: 1}
    ids = read_panoptic_png(out / "annotations" / "panoptic_train" / "a.png")
    if far > 0:  # the wedge covers x >= 2 between its two edges: full rows to the right edge
        assert ids[6, 2:].all() and not ids[6, :2].any()
    else:
        assert ids[6, :2].all() and not ids[6, 3:].any()


def test_huge_cvat_mask_box_costs_only_the_image(tmp_path):
    """A brush mask box of 10^10 pixels overlapping the image: decoded inside the image only."""
    export = tmp_path / "export"
    write_picture(export / "images" / "a.jpg")
    side = 100_000
    xml_export(
        export,
        [
            (
                "0",
                "a.jpg",
                W,
                H,
                f'<mask label="car" rle="0,{side * side}" left="-5" top="-5" width="{side}" height="{side}"/>',
            )
        ],
    )
    out = tmp_path / "out"
    proc = _convert_under_memory_limit(export, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_panoptic_png(out / "annotations" / "panoptic_train" / "a.png").all()


@pytest.mark.parametrize("parent_is_file", [True, False])
def test_unwritable_output_is_a_one_line_error(tmp_path, parent_is_file, monkeypatch, caplog):
    export = one_image_coco(tmp_path / "export", [ann(1)])
    if parent_is_file:
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
        code, errors = run_cli(["--cvat", export, "--out", out], caplog)
        assert code == 2 and errors == [f"error: --output-dir {out}: {tmp_path / 'file'} is a file, not a folder"]
        return
    # The tests may run as root (every folder writable): make the temporary folder fail instead.
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    out = tmp_path / "out"
    code, errors = run_cli(["--cvat", export, "--out", out], caplog)
    assert code == 2 and errors == [f"error: --output-dir {out}: cannot write {tmp_path} (Permission denied)"]
    assert no_output_left(tmp_path, out)


def test_not_writable_output_folder_is_refused_before_any_work(tmp_path, monkeypatch, caplog):
    export = one_image_coco(tmp_path / "export", [ann(1)])
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    code, errors = run_cli(["--cvat", export, "--out", tmp_path / "out"], caplog)
    assert code == 2 and errors == [f"error: --output-dir {tmp_path / 'out'}: folder {tmp_path} is not writable"]


# ----------------------------------------------------------------------------- pictures outside


@pytest.mark.parametrize("outside", ["relative", "absolute"])
def test_pictures_outside_the_export_need_images(tmp_path, outside, caplog):
    elsewhere = tmp_path / "elsewhere"
    write_picture(elsewhere / "x.jpg")
    export = tmp_path / "export"
    (export / "images").mkdir(parents=True)
    name = "../../elsewhere/x.jpg" if outside == "relative" else str(elsewhere / "x.jpg")
    coco_export(export, [image(1, name)], [ann(1)])
    assert_refused(
        tmp_path,
        export,
        caplog,
        f"instances_default.json: image 1 ({name}): the picture",
        "is outside the export folder: refused (pass --images",
    )
    out = tmp_path / "out"
    code, errors = run_cli(["--cvat", export, "--out", out, "--images", elsewhere], caplog)
    assert code == 0 and not errors and (out / "train" / "x.jpg").is_file()


# ----------------------------------------------------------------------------- stuff cache


@pytest.mark.parametrize("maps_written", [0, 1])
def test_failing_stuff_model_says_what_it_keeps(tmp_path, monkeypatch, maps_written, caplog):
    from dataset_scripts.stuff_model import StuffModelError

    class FakeMapping:
        stuff_names = ["sky"]
        source = "fake"

    def failing(items, model, mapping, cache_dir, **kwargs):
        for key, _ in items[:maps_written]:
            stuff_model.cache_path(cache_dir, key).parent.mkdir(parents=True, exist_ok=True)
            stuff_model.cache_path(cache_dir, key).write_bytes(b"map")
        raise StuffModelError("model not found (offline)")

    monkeypatch.setattr(stuff_model, "load_stuff_mapping", lambda path: FakeMapping())
    monkeypatch.setattr(stuff_model, "pseudo_label_stuff", failing)
    export = one_image_coco(tmp_path / "export", [ann(1)])
    error = assert_refused(
        tmp_path, export, caplog, "--stuff-from-model m: model not found", extra=["--stuff-from-model", "m"]
    )
    cache = tmp_path / "out.stuff-cache"
    if maps_written:
        assert "the 1 stuff maps computed so far are kept in" in error
        assert stuff_model.cache_path(cache / "m", "a.jpg").is_file()
    else:
        assert "no stuff map was written" in error and not cache.exists()


def test_convert_exports_raises_conversion_error_for_the_library(tmp_path):
    export = one_image_coco(tmp_path / "export", [ann(5, category_id=[1])])
    with pytest.raises(ConversionError, match="category_id must be an integer"):
        convert_exports([export], tmp_path / "out", ConversionOptions())


def test_error_after_the_stuff_model_says_the_maps_are_kept(tmp_path, monkeypatch, caplog):
    class FakeMapping:
        stuff_names = ["sky"]
        source = "fake"

    def fake(items, model, mapping, cache_dir, **kwargs):
        for key, _ in items:
            stuff_model.cache_path(cache_dir, key).parent.mkdir(parents=True, exist_ok=True)
            stuff_model.cache_path(cache_dir, key).write_bytes(b"not an npz")

    monkeypatch.setattr(stuff_model, "load_stuff_mapping", lambda path: FakeMapping())
    monkeypatch.setattr(stuff_model, "pseudo_label_stuff", fake)
    export = one_image_coco(tmp_path / "export", [ann(1)])
    error = assert_refused(tmp_path, export, caplog, "out.stuff-cache", extra=["--stuff-from-model", "m"])
    assert error.endswith(f"(the stuff maps stay in {tmp_path / 'out.stuff-cache' / 'm'} for the next run)")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "instances_default.json: cannot read"),  # a folder named like the file
        ("[" * 100_000, "instances_default.json: malformed JSON (RecursionError)"),
        ('{"images": [{"id": 1, "file_name": "a.jpg", "width": 1' + "0" * 5000 + "}]}", "malformed JSON"),
    ],
)
def test_unreadable_annotation_files_are_one_line_errors(tmp_path, content, message, caplog):
    export = tmp_path / "export"
    path = export / "annotations" / "instances_default.json"
    if content is None:
        path.mkdir(parents=True)
    else:
        path.parent.mkdir(parents=True)
        path.write_text(content)
    assert_refused(tmp_path, export, caplog, message)
