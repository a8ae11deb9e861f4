"""PQ evaluator: identical numbers to panopticapi's pq_compute, three entry points, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset_scripts.panoptic_format import read_panoptic_png, segment_stats, write_panoptic_png
from finetune.evaluation.panoptic_quality import (
    PanopticEvaluationError,
    PQAccumulator,
    evaluate_folders,
    main,
)

CATEGORIES = [
    {"id": 1, "name": "worker", "isthing": 1, "color": [220, 20, 60]},
    {"id": 3, "name": "crane", "isthing": 1, "color": [0, 0, 142]},
    {"id": 7, "name": "pallet", "isthing": 1, "color": [0, 80, 100]},
    {"id": 20, "name": "floor", "isthing": 0, "color": [128, 64, 128]},
    {"id": 21, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
    {"id": 40, "name": "never_seen", "isthing": 0, "color": [1, 2, 3]},
]
OCCURRING = [1, 3, 7, 20, 21]


def _paint(rng, height, width, boxes):
    """Paint (segment id, y0, x0, y1, x1) boxes in order on a void map; later boxes cover earlier."""
    ids = np.zeros((height, width), dtype=np.int64)
    for seg_id, y0, x0, y1, x1 in boxes:
        ids[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = seg_id
    return ids


def _segments(ids, categories_of, crowd_of=None):
    stats = segment_stats(ids)
    return [
        {
            "id": seg_id,
            "category_id": categories_of[seg_id],
            "iscrowd": int((crowd_of or {}).get(seg_id, 0)),
            "area": s.area,
            "bbox": s.bbox,
        }
        for seg_id, s in stats.items()
    ]


def random_pair(rng, height=36, width=44):
    """A GT / prediction pair with crowd, void, wrong classes, misses, false positives, shifted boxes.

    GT and prediction ids are drawn independently (unrelated), sometimes above 2**16 to use all
    three PNG channels. Returns (gt_ids, gt_segments, pred_ids, pred_segments).
    """
    n = int(rng.integers(0, 9))
    gt_boxes, gt_cat, gt_crowd = [], {}, {}
    pred_boxes, pred_cat = [], {}
    used_gt, used_pred = set(), set()

    def new_id(used):
        while True:
            seg_id = int(rng.integers(1, 2**24 - 1)) if rng.random() < 0.5 else int(rng.integers(1, 300))
            if seg_id not in used:
                used.add(seg_id)
                return seg_id

    for _ in range(n):
        y0, x0 = int(rng.integers(-5, height - 4)), int(rng.integers(-5, width - 4))
        y1, x1 = y0 + int(rng.integers(3, height // 2 + 4)), x0 + int(rng.integers(3, width // 2 + 4))
        gid = new_id(used_gt)
        gt_boxes.append((gid, y0, x0, y1, x1))
        gt_cat[gid] = int(rng.choice(OCCURRING))
        gt_crowd[gid] = int(rng.random() < 0.2)
        if rng.random() < 0.15:  # missed
            continue
        jitter = rng.integers(-4, 5, size=4)
        pid = new_id(used_pred)
        pred_boxes.append((pid, y0 + jitter[0], x0 + jitter[1], y1 + jitter[2], x1 + jitter[3]))
        pred_cat[pid] = gt_cat[gid] if rng.random() > 0.2 else int(rng.choice(OCCURRING))
    for _ in range(int(rng.integers(0, 3))):  # false positives, some on void or crowd regions
        y0, x0 = int(rng.integers(0, height - 3)), int(rng.integers(0, width - 3))
        pid = new_id(used_pred)
        pred_boxes.append((pid, y0, x0, y0 + int(rng.integers(2, 12)), x0 + int(rng.integers(2, 12))))
        pred_cat[pid] = int(rng.choice(OCCURRING))
    rng.shuffle(pred_boxes)
    gt_ids = _paint(rng, height, width, gt_boxes)
    pred_ids = _paint(rng, height, width, pred_boxes)
    if rng.random() < 0.3:  # predicted void holes
        pred_ids[rng.random(pred_ids.shape) < 0.1] = 0
    if rng.random() < 0.1:  # an empty prediction
        pred_ids[:] = 0
    return gt_ids, _segments(gt_ids, gt_cat, gt_crowd), pred_ids, _segments(pred_ids, pred_cat)


def write_folder(
    root: Path, name: str, images: list[tuple[int, np.ndarray, list[dict]]]
) -> tuple[Path, Path]:
    """Write a COCO-panoptic JSON + PNG folder; returns (json path, png folder)."""
    folder = root / name
    folder.mkdir(parents=True)
    annotations, image_infos = [], []
    for image_id, ids, segments in images:
        file_name = f"{image_id:06d}.png"
        write_panoptic_png(folder / file_name, ids)
        annotations.append({"image_id": image_id, "file_name": file_name, "segments_info": segments})
        image_infos.append(
            {
                "id": image_id,
                "file_name": f"{image_id:06d}.jpg",
                "height": ids.shape[0],
                "width": ids.shape[1],
            }
        )
    json_path = root / f"{name}.json"
    json_path.write_text(
        json.dumps({"images": image_infos, "annotations": annotations, "categories": CATEGORIES})
    )
    return json_path, folder


def pq_compute_reference(gt_json, pred_json, gt_folder, pred_folder):
    from panopticapi.evaluation import pq_compute

    return pq_compute(str(gt_json), str(pred_json), gt_folder=str(gt_folder), pred_folder=str(pred_folder))


def assert_same_results(ours, reference, tol=1e-9):
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == reference[group]["n"], group
        for key in ("pq", "sq", "rq"):
            assert ours[group][key] == pytest.approx(reference[group][key], abs=tol), (group, key)
    assert set(ours["per_class"]) == set(reference["per_class"])
    for cat_id, values in reference["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert ours["per_class"][cat_id][key] == pytest.approx(values[key], abs=tol), (cat_id, key)


@pytest.fixture(scope="module")
def random_dataset(tmp_path_factory):
    """40 random GT / prediction pairs written as COCO-panoptic folders, plus panopticapi's answer."""
    rng = np.random.default_rng(1234)
    root = tmp_path_factory.mktemp("pq_random")
    pairs = [random_pair(rng) for _ in range(40)]
    gt_json, gt_folder = write_folder(root, "gt", [(i, g, gs) for i, (g, gs, _, _) in enumerate(pairs)])
    pred_json, pred_folder = write_folder(root, "pred", [(i, p, ps) for i, (_, _, p, ps) in enumerate(pairs)])
    reference = pq_compute_reference(gt_json, pred_json, gt_folder, pred_folder)
    return {
        "pairs": pairs,
        "gt": (gt_json, gt_folder),
        "pred": (pred_json, pred_folder),
        "reference": reference,
    }


def test_random_pairs_exercise_every_case(random_dataset):
    """Guards the generator: the cross-check below is only worth something if these cases occur."""
    stats = PQAccumulator(CATEGORIES)
    crowd = void_pred = empty = 0
    for gt_ids, gt_segs, pred_ids, pred_segs in random_dataset["pairs"]:
        stats.update(pred_ids, pred_segs, gt_ids, gt_segs)
        crowd += any(s["iscrowd"] for s in gt_segs)
        void_pred += bool((pred_ids == 0).any())
        empty += not pred_segs
    assert crowd >= 5 and void_pred >= 20 and empty >= 1
    tp, fp, fn = stats.stats[:, 1:].sum(axis=0)
    assert tp >= 20 and fp >= 20 and fn >= 20
    # some IoUs in the matched range, some rejected: SQ strictly between 0.5 and 1
    assert 0.5 < stats.compute()["All"]["sq"] < 1.0


def test_folders_match_panopticapi(random_dataset):
    (gt_json, gt_folder), (pred_json, pred_folder) = random_dataset["gt"], random_dataset["pred"]
    for workers in (1, 2):
        results, _, _ = evaluate_folders(gt_json, pred_json, gt_folder, pred_folder, workers=workers)
        assert_same_results(results, random_dataset["reference"])


def test_accumulator_matches_panopticapi_and_merges(random_dataset):
    pairs = random_dataset["pairs"]
    single = PQAccumulator(CATEGORIES)
    parts = [PQAccumulator(CATEGORIES), PQAccumulator(CATEGORIES)]
    for index, (gt_ids, gt_segs, pred_ids, pred_segs) in enumerate(pairs):
        # torch tensors (as from post-processing) and numpy arrays are both accepted
        pred = torch.from_numpy(pred_ids).to(torch.int32) if index % 2 else pred_ids
        single.update(pred, pred_segs, gt_ids, gt_segs, image_id=index)
        parts[index % 2].update(pred_ids, pred_segs, gt_ids, gt_segs)
    assert_same_results(single.compute(), random_dataset["reference"])

    merged = PQAccumulator(CATEGORIES).merge(parts[0]).merge(parts[1])
    assert merged.num_images == len(pairs)
    assert_same_results(merged.compute(), single.compute(), tol=1e-12)

    # what accelerator.reduce(sum) / gather does with the tensors
    reduced = PQAccumulator.from_tensor(CATEGORIES, parts[0].to_tensor() + parts[1].to_tensor())
    gathered = PQAccumulator.from_tensor(CATEGORIES, torch.stack([p.to_tensor() for p in parts]))
    for acc in (reduced, gathered):
        assert acc.num_images == len(pairs)
        np.testing.assert_allclose(acc.stats, single.stats, atol=1e-12)


def test_cli_writes_pq_compute_layout(random_dataset, tmp_path, capsys):
    (gt_json, gt_folder), (pred_json, pred_folder) = random_dataset["gt"], random_dataset["pred"]
    out = tmp_path / "pq.json"
    argv = ["--gt-json", str(gt_json), "--gt-folder", str(gt_folder), "--pred-json", str(pred_json)]
    argv += ["--pred-folder", str(pred_folder), "--json-out", str(out), "--workers", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "All" in printed and "Things" in printed and "never_seen" in printed and "crane" in printed
    written = json.loads(out.read_text())
    written["per_class"] = {int(k): v for k, v in written["per_class"].items()}
    assert_same_results(written, random_dataset["reference"])


def test_cli_runs_as_module(random_dataset, tmp_path, repo_root):
    (gt_json, _gt_folder), (pred_json, _) = random_dataset["gt"], random_dataset["pred"]
    # default PNG folders: the JSON path without .json
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune.evaluation.panoptic_quality",
            "--gt-json",
            str(gt_json),
            "--pred-json",
            str(pred_json),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    all_row = next(line for line in proc.stdout.splitlines() if line.startswith("All"))
    assert float(all_row.split("|")[1].split()[0]) == pytest.approx(  # fractions, 3 decimals
        random_dataset["reference"]["All"]["pq"], abs=0.00051
    )


def test_real_sample_against_itself_and_perturbed(shared_data, tmp_path):
    sample = shared_data / "panopticapi_sample" / "sample_data"
    gt_json, gt_folder = sample / "panoptic_examples.json", sample / "panoptic_examples"
    results, _, _ = evaluate_folders(gt_json, gt_json, gt_folder, gt_folder, workers=1)
    assert results["All"]["pq"] == 1.0 and results["All"]["n"] >= 8
    assert_same_results(results, pq_compute_reference(gt_json, gt_json, gt_folder, gt_folder))

    # perturbed copy: relabelled ids, one segment re-classed, one eroded to half, one deleted
    data = json.loads(gt_json.read_text())
    pred_folder = tmp_path / "pred"
    pred_folder.mkdir()
    rng = np.random.default_rng(0)
    for ann in data["annotations"]:
        ids = read_panoptic_png(gt_folder / ann["file_name"])
        segs = ann["segments_info"]
        new_ids = np.zeros_like(ids)
        kept = []
        for k, seg in enumerate(segs):
            mask = ids == seg["id"]
            if k == 0:
                continue  # deleted: a false negative
            if k == 1:
                rows = np.flatnonzero(mask.any(axis=1))
                mask[: rows[len(rows) // 2]] = False  # top half removed
            new_id = 1000 + 37 * k
            new_ids[mask] = new_id
            category = (
                seg["category_id"]
                if k != 2
                else data["categories"][rng.integers(len(data["categories"]))]["id"]
            )
            kept.append({"id": new_id, "category_id": category, "iscrowd": 0})
        write_panoptic_png(pred_folder / ann["file_name"], new_ids)
        ann["segments_info"] = [s for s in kept if (new_ids == s["id"]).any()]
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps(data))
    results, _, _ = evaluate_folders(gt_json, pred_json, gt_folder, pred_folder, workers=2)
    assert 0.5 < results["All"]["pq"] < 1.0
    assert_same_results(results, pq_compute_reference(gt_json, pred_json, gt_folder, pred_folder))


# ------------------------------------------------------------------------------------------
# Documented behaviour and bad input
# ------------------------------------------------------------------------------------------


def _tiny(tmp_path, pred_ids=None, pred_segments=None):
    gt_ids = np.zeros((8, 10), dtype=np.int64)
    gt_ids[:4, :5] = 5
    gt_ids[4:, :] = 9
    gt_segs = [
        {"id": 5, "category_id": 1, "iscrowd": 0, "area": 20, "bbox": [0, 0, 5, 4]},
        {"id": 9, "category_id": 20, "iscrowd": 0, "area": 40, "bbox": [0, 4, 10, 4]},
    ]
    if pred_ids is None:
        pred_ids, pred_segments = gt_ids.copy(), [{"id": 5, "category_id": 1}, {"id": 9, "category_id": 20}]
    gt = write_folder(tmp_path, "gt", [(1, gt_ids, gt_segs)])
    pred = write_folder(tmp_path, "pred", [(1, pred_ids, pred_segments)])
    return gt, pred


def _evaluate(gt, pred, **kwargs):
    return evaluate_folders(gt[0], pred[0], gt[1], pred[1], workers=1, **kwargs)[0]


def test_missing_prediction_annotation_counts_false_negatives(tmp_path, caplog):
    gt, pred = _tiny(tmp_path)
    # a second GT image without a prediction annotation
    data = json.loads(gt[0].read_text())
    ids = np.full((8, 10), 4, dtype=np.int64)
    write_panoptic_png(gt[1] / "000002.png", ids)
    data["images"].append({"id": 2, "file_name": "000002.jpg", "height": 8, "width": 10})
    data["annotations"].append(
        {
            "image_id": 2,
            "file_name": "000002.png",
            "segments_info": [{"id": 4, "category_id": 3, "iscrowd": 0, "area": 80}],
        }
    )
    gt[0].write_text(json.dumps(data))
    results = _evaluate(gt, pred)
    assert "no prediction annotation" in caplog.text
    assert results["per_class"][3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert results["All"]["n"] == 3  # worker, floor perfect; crane all false negatives
    assert results["All"]["pq"] == pytest.approx(2 / 3)


def test_empty_prediction_image_counts_false_negatives(tmp_path):
    gt, pred = _tiny(tmp_path, np.zeros((8, 10), dtype=np.int64), [])
    results = _evaluate(gt, pred)
    assert results["All"]["n"] == 2 and results["All"]["pq"] == 0.0


def test_no_stuff_class_gives_zero_not_division_error():
    acc = PQAccumulator([{"id": 1, "isthing": True}, {"id": 2, "isthing": False}])
    ids = np.ones((3, 3), dtype=np.int64)
    acc.update(ids, [{"id": 1, "category_id": 1}], ids, [{"id": 1, "category_id": 1, "iscrowd": 0}])
    results = acc.compute()
    assert results["Stuff"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    assert results["Things"]["pq"] == 1.0


def _rewrite_pred(pred, mutate):
    data = json.loads(pred[0].read_text())
    mutate(data)
    pred[0].write_text(json.dumps(data))


@pytest.mark.parametrize(
    "case, message",
    [
        ("png_id_not_in_json", r"image 1 \(000001.png\): predicted PNG has segment id\(s\) \[9\]"),
        (
            "json_id_not_in_png",
            r"image 1 \(000001.png\): predicted segment id\(s\) \[77\] are in segments_info but not in the PNG",
        ),
        ("unknown_category", r"image 1 \(000001.png\): predicted segment 5 has unknown category_id 99"),
        (
            "size_mismatch",
            r"image 1 \(000001.png\): prediction size \(8, 11\) differs from ground truth size \(8, 10\)",
        ),
        ("missing_png", r"image 1 \(000001.png\): predicted PNG not found: .*000001.png"),
        ("duplicate_image", r"duplicate annotation for image id 1"),
        ("duplicate_segment", r"image 1 \(000001.png\): predicted segments_info repeats segment id 5"),
        ("empty_prediction_set", r"prediction JSON has no annotations"),
        (
            "gt_json_id_not_in_png",
            r"image 1 \(000001.png\): ground-truth segment id\(s\) \[6\] are in segments_info",
        ),
        ("gray_pred_png", r"image 1 \(000001.png\): .*000001.png: panoptic PNG must be RGB, got mode L"),
        ("broken_pred_png", r"image 1 \(000001.png\): .*000001.png: cannot decode panoptic PNG"),
        ("malformed_pred_json", r"pred.json: malformed JSON"),
        ("missing_gt_json", r"ground-truth JSON not found: .*gt.json"),
        ("no_annotations_list", r"pred.json: not a COCO-panoptic file \(no 'annotations' list\)"),
    ],
)
def test_bad_input_names_image_and_id(tmp_path, case, message):
    gt, pred = _tiny(tmp_path)
    if case == "png_id_not_in_json":
        _rewrite_pred(pred, lambda d: d["annotations"][0]["segments_info"].pop())
    elif case == "json_id_not_in_png":
        _rewrite_pred(
            pred, lambda d: d["annotations"][0]["segments_info"].append({"id": 77, "category_id": 1})
        )
    elif case == "unknown_category":
        _rewrite_pred(pred, lambda d: d["annotations"][0]["segments_info"][0].update(category_id=99))
    elif case == "size_mismatch":
        write_panoptic_png(pred[1] / "000001.png", np.zeros((8, 11), dtype=np.int64))
        _rewrite_pred(pred, lambda d: d["annotations"][0].update(segments_info=[]))
    elif case == "missing_png":
        (pred[1] / "000001.png").unlink()
    elif case == "duplicate_image":
        _rewrite_pred(pred, lambda d: d["annotations"].append(dict(d["annotations"][0])))
    elif case == "duplicate_segment":
        _rewrite_pred(
            pred, lambda d: d["annotations"][0]["segments_info"].append({"id": 5, "category_id": 1})
        )
    elif case == "empty_prediction_set":
        _rewrite_pred(pred, lambda d: d.update(annotations=[]))
    elif case == "gray_pred_png":
        Image.fromarray(np.zeros((8, 10), np.uint8), mode="L").save(pred[1] / "000001.png")
    elif case == "broken_pred_png":
        (pred[1] / "000001.png").write_bytes(b"not a png")
    elif case == "malformed_pred_json":
        pred[0].write_text("{not json")
    elif case == "missing_gt_json":
        gt[0].unlink()
    elif case == "no_annotations_list":
        pred[0].write_text("[]")
    elif case == "gt_json_id_not_in_png":
        data = json.loads(gt[0].read_text())
        data["annotations"][0]["segments_info"].append({"id": 6, "category_id": 1, "iscrowd": 0, "area": 3})
        gt[0].write_text(json.dumps(data))
    with pytest.raises(PanopticEvaluationError, match=message):
        _evaluate(gt, pred)


def test_cli_bad_input_exits_nonzero_without_output(tmp_path, caplog):
    gt, pred = _tiny(tmp_path)
    shutil.rmtree(pred[1])
    pred[1].mkdir()
    out = tmp_path / "out.json"
    argv = [
        "--gt-json",
        str(gt[0]),
        "--gt-folder",
        str(gt[1]),
        "--pred-json",
        str(pred[0]),
        "--pred-folder",
        str(pred[1]),
    ]
    assert main([*argv, "--json-out", str(out)]) == 2
    assert "predicted PNG not found" in caplog.text
    assert not out.exists()


def test_accumulator_rejects_bad_arrays():
    acc = PQAccumulator(CATEGORIES)
    ids = np.ones((4, 4), dtype=np.int64)
    segs = [{"id": 1, "category_id": 1, "iscrowd": 0}]
    with pytest.raises(PanopticEvaluationError, match="differs from ground truth size"):
        acc.update(ids[:3], segs, ids, segs, image_id="x")
    with pytest.raises(PanopticEvaluationError, match=r"image 7: predicted PNG has segment id\(s\) \[-1\]"):
        acc.update(-ids, segs, ids, segs, image_id=7)
    with pytest.raises(PanopticEvaluationError, match="different categories"):
        acc.merge(PQAccumulator(CATEGORIES[:2]))


# ------------------------------------------------------------------------------------------
# The `evaluate` metric module
# ------------------------------------------------------------------------------------------


def test_evaluate_metric_module_matches_accumulator(random_dataset, repo_root):
    import evaluate

    metric = evaluate.load(str(repo_root / "finetune" / "metrics" / "panoptic_quality"))
    pairs = random_dataset["pairs"][:12]
    for start in (0, 6):
        batch = pairs[start : start + 6]
        metric.add_batch(
            predictions=[p for _, _, p, _ in batch],
            references=[g for g, _, _, _ in batch],
            prediction_segments=[
                [{"id": s["id"], "category_id": s["category_id"]} for s in ps] for _, _, _, ps in batch
            ],
            reference_segments=[
                [{k: s[k] for k in ("id", "category_id", "iscrowd")} for s in gs] for _, gs, _, _ in batch
            ],
        )
    results = metric.compute(categories=CATEGORIES)
    acc = PQAccumulator(CATEGORIES)
    for gt_ids, gt_segs, pred_ids, pred_segs in pairs:
        acc.update(pred_ids, pred_segs, gt_ids, gt_segs)
    assert_same_results(results, acc.compute(), tol=1e-12)
    assert 0 < results["All"]["pq"] < 1


def test_evaluate_metric_loads_outside_the_repo(tmp_path, repo_root):
    """evaluate copies the module into its cache: it must still find the repo from another folder."""
    script = (
        "import evaluate\n"
        f"pq = evaluate.load({str(repo_root / 'finetune' / 'metrics' / 'panoptic_quality')!r})\n"
        "ids = [[0, 5], [5, 7]]\n"
        "pq.add_batch(predictions=[ids], references=[ids], prediction_segments=[[{'id': 5, 'category_id': 1}, "
        "{'id': 7, 'category_id': 2}]], reference_segments=[[{'id': 5, 'category_id': 1, 'iscrowd': 0}, "
        "{'id': 7, 'category_id': 1, 'iscrowd': 0}]])\n"
        "r = pq.compute(categories=[{'id': 1, 'isthing': True}, {'id': 2, 'isthing': False}])\n"
        "print(r['All']['pq'], r['All']['n'])\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # class 1: GT 5 (2 px: TP, IoU 1) + GT 7 (1 px: FN); class 2: predicted 7 (FP) -> (1/1.5 + 0) / 2
    pq, n = proc.stdout.split()
    assert float(pq) == pytest.approx((1 / 1.5) / 2) and int(n) == 2
