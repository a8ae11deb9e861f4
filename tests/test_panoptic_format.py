import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_scripts.atomic_io import atomic_directory, atomic_write_json
from dataset_scripts.panoptic_format import (
    PanopticFormatError,
    id2rgb,
    load_panoptic_json,
    read_panoptic_png,
    read_panoptic_rgb,
    rgb2id,
    segment_stats,
    write_panoptic_png,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_id_encoding_roundtrip_covers_all_three_channels(tmp_path):
    ids = np.array([[0, 1, 255], [256, 65535, 65536], [256**3 - 1, 12345678, 7]], dtype=np.int64)
    assert np.array_equal(rgb2id(id2rgb(ids)), ids)
    # R + 256 G + 256^2 B, the COCO convention.
    assert id2rgb(np.array([[1 + 2 * 256 + 3 * 65536]]))[0, 0].tolist() == [1, 2, 3]
    write_panoptic_png(tmp_path / "a.png", ids)
    assert np.array_equal(read_panoptic_png(tmp_path / "a.png"), ids)


def test_id2rgb_rejects_out_of_range():
    with pytest.raises(PanopticFormatError):
        id2rgb(np.array([[256**3]]))


def test_segment_stats_exact_area_and_box():
    ids = np.zeros((6, 8), dtype=np.int64)
    ids[1:3, 2:5] = 7  # 2 rows x 3 cols
    ids[5, 7] = 9  # single pixel at x=7, y=5
    ids[0, 0] = 7  # makes segment 7 non-convex: box grows to the corner
    stats = segment_stats(ids)
    assert set(stats) == {7, 9}
    assert stats[7].area == 7 and stats[7].bbox == [0, 0, 5, 3]
    assert stats[9].area == 1 and stats[9].bbox == [7, 5, 1, 1]


def test_segment_stats_void_only():
    assert segment_stats(np.zeros((3, 3), dtype=np.int64)) == {}


def test_read_panoptic_png_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_panoptic_png(tmp_path / "missing.png")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(PanopticFormatError, match="broken.png"):
        read_panoptic_png(bad)


def test_read_panoptic_rgb_gives_the_png_bytes(tmp_path):
    ids = np.array([[0, 1, 256], [65536, 7, 256**3 - 1]], dtype=np.int64)
    write_panoptic_png(tmp_path / "a.png", ids)
    rgb = read_panoptic_rgb(tmp_path / "a.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert np.array_equal(rgb, id2rgb(ids))
    # Another tool's RGBA PNG: the alpha channel is ignored, as panopticapi does.
    rgba = np.concatenate([id2rgb(ids), np.full((2, 3, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_panoptic_png(tmp_path / "rgba.png"), ids)
    Image.fromarray(np.zeros((2, 3), np.uint8), mode="L").save(tmp_path / "gray.png")
    with pytest.raises(PanopticFormatError, match=r"gray.png: panoptic PNG must be RGB, got mode L"):
        read_panoptic_rgb(tmp_path / "gray.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_panoptic_rgb(tmp_path / "missing.png")


def test_module_import_leaves_scipy_for_segment_stats():
    """Every PQ worker process imports this module: scipy (~0.3 s) only comes with `segment_stats`."""
    code = (
        "import sys\n"
        "from dataset_scripts import panoptic_format\n"
        "assert 'scipy' not in sys.modules, 'scipy imported with panoptic_format'\n"
        "import finetune.evaluation.panoptic_quality\n"
        "assert 'scipy' not in sys.modules, 'scipy imported with finetune.evaluation.panoptic_quality'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_load_panoptic_json_checks(tmp_path):
    good = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 2, "height": 2}],
        "annotations": [
            {"image_id": 1, "file_name": "a.png", "segments_info": [{"id": 1, "category_id": 3}]}
        ],
        "categories": [{"id": 3, "name": "x", "isthing": 1}],
    }
    path = tmp_path / "p.json"
    atomic_write_json(path, good)
    assert load_panoptic_json(path)["categories"][0]["name"] == "x"
    bad = json.loads(json.dumps(good))
    bad["annotations"][0]["segments_info"][0]["category_id"] = 99
    atomic_write_json(path, bad)
    with pytest.raises(PanopticFormatError, match="unknown category 99"):
        load_panoptic_json(path)
    path.write_text("{not json")
    with pytest.raises(PanopticFormatError, match="malformed JSON"):
        load_panoptic_json(path)


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(final) as tmp:
        (tmp / "done.txt").write_text("ok")
    assert (final / "done.txt").read_text() == "ok"
    with pytest.raises(FileExistsError), atomic_directory(final):
        pass
    with atomic_directory(final, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "f.json", {"a": 1})
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_segment_stats_small_and_large_ids_agree():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 6, size=(40, 50))
    # Same partition with COCO-style huge ids (forces the np.unique path).
    large = np.where(small == 0, 0, small * 1_000_003 + 7)
    s_small = segment_stats(small)
    s_large = segment_stats(large)
    assert sorted(s_small) == [1, 2, 3, 4, 5]
    for seg in s_small:
        assert s_small[seg] == s_large[seg * 1_000_003 + 7]
        mask = small == seg
        rows, cols = np.nonzero(mask)
        assert s_small[seg].area == mask.sum()
        assert s_small[seg].bbox == [
            cols.min(),
            rows.min(),
            cols.max() - cols.min() + 1,
            rows.max() - rows.min() + 1,
        ]
