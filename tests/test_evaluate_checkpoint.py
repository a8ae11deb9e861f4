"""finetune/evaluate.py: a tiny checkpoint saved to tmp_path, evaluated on a tiny COCO-panoptic folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset_scripts.panoptic_format import read_panoptic_png, segment_stats, write_panoptic_png
from finetune.evaluation.panoptic_quality import evaluate_folders

CATEGORIES = [
    {"id": 1, "name": "crane", "isthing": 1, "color": [200, 0, 0], "supercategory": "machine"},
    {"id": 5, "name": "floor", "isthing": 0, "color": [0, 200, 0], "supercategory": "ground"},
    {"id": 9, "name": "worker", "isthing": 1, "color": [0, 0, 200], "supercategory": "person"},
]


def _write_panoptic_folder(root: Path, num_images: int = 3) -> Path:
    """DIR/annotations/panoptic_val.json + PNGs + DIR/val/*.jpg, 48x64 images with 2-4 segments."""
    rng = np.random.default_rng(0)
    (root / "val").mkdir(parents=True)
    images, annotations = [], []
    for index in range(num_images):
        ids = np.zeros((48, 64), dtype=np.int64)
        ids[30:, :] = 7  # floor (stuff)
        ids[5:25, 8:30] = 300 + index  # crane
        ids[10:40, 40:52] = 70000  # worker (id uses the G channel)
        if index == 1:
            ids[0:4, 0:10] = 0  # void
        categories = {7: 5, 300 + index: 1, 70000: 9}
        name = f"site_{index}"
        write_panoptic_png(root / "annotations" / "panoptic_val" / f"{name}.png", ids)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "val" / f"{name}.jpg")
        images.append({"id": 10 + index, "file_name": f"{name}.jpg", "width": 64, "height": 48})
        annotations.append(
            {
                "image_id": 10 + index,
                "file_name": f"{name}.png",
                "segments_info": [
                    {"id": k, "category_id": categories[k], "iscrowd": 0, "area": s.area, "bbox": s.bbox}
                    for k, s in segment_stats(ids).items()
                ],
            }
        )
    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / "panoptic_val.json").write_text(json.dumps(data))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import DetrForSegmentation, DetrImageProcessor

    from tests.conftest import tiny_detr_config

    root = tmp_path_factory.mktemp("evaluate_checkpoint")
    dataset = _write_panoptic_folder(root / "panoptic")
    id2label = {i: c["name"] for i, c in enumerate(CATEGORIES)}
    config = tiny_detr_config(num_labels=3, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    config.stuff_label_ids = [1]
    torch.manual_seed(0)
    model = DetrForSegmentation(config)
    with torch.no_grad():  # a random model predicts "no object" at low scores: make it confident of "crane"
        model.detr.class_labels_classifier.bias[0] += 10.0
    model_dir = root / "final"
    model.save_pretrained(model_dir)
    DetrImageProcessor(
        format="coco_panoptic", size={"shortest_edge": 48, "longest_edge": 64}
    ).save_pretrained(model_dir)
    return {"root": root, "dataset": dataset, "model": model_dir}


def test_evaluate_checkpoint_and_saved_predictions_agree(setup, capsys):
    from finetune.evaluate import main

    out, preds = setup["root"] / "metrics.json", setup["root"] / "predictions"
    argv = ["--model", str(setup["model"]), "--dataset", str(setup["dataset"]), "--threshold", "0.0"]
    argv += ["--batch-size", "2", "--device", "cpu", "--cache-dir", str(setup["root"] / "cache")]
    argv += ["--save-predictions", str(preds), "--output-json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "All" in printed and "worker" in printed and "box mAP" in printed

    metrics = json.loads(out.read_text())
    assert metrics["num_images"] == 3
    for key in ("pq", "sq", "rq", "pq_things", "pq_stuff", "box_map", "box_map_50", "box_map_75"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # one PQ unit (issue 12): the printout shows the JSON's fractions, and says so
    lines = printed.splitlines()
    assert lines[0].split("|")[0].strip() == "fractions"
    all_row = next(line for line in lines if line.startswith("All"))
    assert float(all_row.split("|")[1].split()[0]) == pytest.approx(metrics["pq"], abs=0.0005)
    box_row = next(line for line in lines if line.startswith("box mAP"))
    assert float(box_row.split()[2]) == pytest.approx(metrics["box_map"], abs=0.0005) and "fractions" in box_row
    assert set(metrics["per_class_pq"]) == {"crane", "floor", "worker"}

    # the saved COCO-panoptic predictions: one PNG per image, segments matching the PNG ids
    pred_json = preds / "panoptic_val.json"
    data = json.loads(pred_json.read_text())
    assert len(data["annotations"]) == 3
    assert sum(len(a["segments_info"]) for a in data["annotations"]) > 0
    for ann in data["annotations"]:
        ids = read_panoptic_png(preds / "panoptic_val" / ann["file_name"])
        assert ids.shape == (48, 64)
        assert set(np.unique(ids[ids > 0]).tolist()) == {s["id"] for s in ann["segments_info"]}
    # ... and the folder CLI scores them exactly as the in-memory evaluation did
    gt_json = setup["dataset"] / "annotations" / "panoptic_val.json"
    results, _, _ = evaluate_folders(gt_json, pred_json, workers=1)
    for group in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq", "n"):
            assert results[group][key] == pytest.approx(metrics["panoptic_quality"][group][key], abs=1e-12)


class _GroundTruthPredictor:
    """Runs the tiny model (for the box head) but returns the ground truth as panoptic prediction,
    with model labels = positions in the category table: checks the label -> category mapping."""

    def __init__(self, model, processor, gt_folder: Path):
        self.model, self.image_processor, self.batch_size = model, processor, 2
        self.gt_folder = gt_folder
        self.names = [Path(p).stem for p in sorted(gt_folder.glob("*.png"))]
        self.calls = 0

    def predict_batch(self, images):
        from finetune.inference import BatchOutput, PanopticPrediction

        inputs = self.image_processor(images=images, return_tensors="pt")
        outputs = self.model.detr(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
        label_of = {1: 0, 5: 1, 9: 2}
        data = json.loads((self.gt_folder.parent / "panoptic_val.json").read_text())
        out = []
        for ann in data["annotations"][self.calls : self.calls + len(images)]:
            ids = read_panoptic_png(self.gt_folder / ann["file_name"])
            segments = [
                {
                    "id": s["id"],
                    "label_id": label_of[s["category_id"]],
                    "bbox": s["bbox"],
                    "area": s["area"],
                    "score": 1.0,
                }
                for s in ann["segments_info"]
            ]
            out.append(PanopticPrediction(ids=ids, segments=segments))
        self.calls += len(images)
        return BatchOutput(outputs.logits, outputs.pred_boxes, out, mask_queries=0)


def test_ground_truth_predictions_score_one(setup):
    from transformers import DetrForSegmentation, DetrImageProcessor

    from finetune.evaluate import evaluate_split, load_split

    split, categories = load_split(setup["dataset"], "val", cache_dir=str(setup["root"] / "cache"))
    assert [c["id"] for c in categories] == [1, 5, 9]
    model = DetrForSegmentation.from_pretrained(setup["model"]).eval()
    processor = DetrImageProcessor.from_pretrained(setup["model"])
    predictor = _GroundTruthPredictor(model, processor, setup["dataset"] / "annotations" / "panoptic_val")
    with torch.no_grad():
        results, pq, boxes = evaluate_split(predictor, split, categories)
    assert results["pq"] == 1.0 and results["pq_things"] == 1.0 and results["pq_stuff"] == 1.0
    assert results["per_class_pq"] == {"crane": 1.0, "floor": 1.0, "worker": 1.0}
    assert len(boxes) == 3 and results["num_images"] == 3


def test_bad_setup_exits_nonzero(setup, tmp_path, repo_root):
    # run as a file: the sys.path rule keeps finetune/evaluate.py from shadowing the `evaluate` library
    proc = subprocess.run(
        [
            sys.executable,
            "finetune/evaluate.py",
            "--model",
            str(setup["model"]),
            "--dataset",
            str(tmp_path / "nope"),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "no such folder" in proc.stderr

    from finetune.evaluate import label_categories
    from finetune.inference import LabelMismatchError
    from tests.conftest import tiny_detr_config

    with pytest.raises(LabelMismatchError, match="model label.* 0 'LABEL_0', 1 'LABEL_1' match no dataset"):
        label_categories(tiny_detr_config(num_labels=2), CATEGORIES)


def test_default_flags_use_the_thresholds_saved_with_the_checkpoint(setup, tmp_path, monkeypatch):
    """A final/ folder written by save_model_folder after an eval at threshold 0.3 is evaluated at 0.3."""
    from transformers import DetrForSegmentation, DetrImageProcessor

    import finetune.evaluate
    from finetune.config import TrainingConfig
    from finetune.training.export import save_model_folder

    config = TrainingConfig()
    config.eval.threshold, config.eval.mask_threshold, config.eval.overlap_mask_area_threshold = 0.3, 0.4, 0.6
    final = save_model_folder(
        DetrForSegmentation.from_pretrained(setup["model"]),
        DetrImageProcessor.from_pretrained(setup["model"]),
        tmp_path / "final",
        config,
        CATEGORIES,
        {"pq": 0.0},
    )
    seen = []
    real = finetune.evaluate.evaluate_split

    def spy(predictor, *args, **kwargs):
        seen.append((predictor.threshold, predictor.mask_threshold, predictor.overlap_mask_area_threshold))
        return real(predictor, *args, **kwargs)

    monkeypatch.setattr(finetune.evaluate, "evaluate_split", spy)
    argv = ["--model", str(final), "--dataset", str(setup["dataset"]), "--device", "cpu"]
    argv += ["--cache-dir", str(setup["root"] / "cache"), "--max-images", "1"]
    assert finetune.evaluate.main(argv) == 0
    assert finetune.evaluate.main([*argv, "--threshold", "0.9"]) == 0
    assert seen == [(0.3, 0.4, 0.6), (0.9, 0.4, 0.6)]


def test_evaluation_maps_labels_by_saved_category_ids_on_a_reordered_table(setup):
    """The dataset lists its categories in another order: labels still map to the right ids."""
    from transformers import DetrForSegmentation

    from finetune.evaluate import label_categories

    config = DetrForSegmentation.from_pretrained(setup["model"]).config
    config.category_ids = [1, 5, 9]
    assert label_categories(config, CATEGORIES[::-1]) == {0: 1, 1: 5, 2: 9}
