"""Every path of the project on the offline stand-in of `facebook/detr-resnet-50-panoptic`, with no network.

The stand-in (`tests.hub_standin.save_hub_standin`) has the real repository's layout: transformers-4.x key
names in `pytorch_model.bin`, the legacy 4.x `config.json` whose labels 184-200 are `LABEL_184` ...
`LABEL_200`, and a `DetrFeatureExtractor` preprocessor config; reduced transformer widths, the real resnet50.
In-process paths run under `no_network`; command lines run in subprocesses under `network_blocked_env`
(every Python process of the launch refuses and logs network attempts).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dataset_scripts.coco_panoptic import coco_panoptic_categories
from dataset_scripts.stuff.cache import load_stuff_map
from dataset_scripts.stuff.mapping import load_stuff_mapping
from tests.hub_standin import STANDIN_ARCHITECTURE, WEIGHTS_NAME, network_blocked_env, save_hub_standin
from tests.train_runs import BIN, REPO_ROOT, TRAIN, sample_export_args, train_env

DEFAULT_CONFIG = REPO_ROOT / "finetune" / "configs" / "default.yaml"
# The class_map that default.yaml and docs/training.md suggest for the sample's stuff classes.
SUGGESTED_CLASS_MAP = {
    "wall": "wall-other-merged",
    "ground": "dirt-merged",
    "floor": "floor-other-merged",
    "sky": "sky-other-merged",
}
# default.yaml, shrunk to a few small images and one epoch per stage (the model stays the stand-in).
SMALL_RUN = [
    "--max_train_samples", "4", "--max_eval_samples", "2", "--num_workers", "0",
    "--train_scales", "64,80", "--max_size", "128", "--crop_resize_scales", "64", "--crop_min_size", "48",
    "--crop_max_size", "64", "--eval_size", "96", "--eval_max_size", "128",
    "--detection_epochs", "1", "--masks_epochs", "1", "--detection_batch_size", "2", "--masks_batch_size", "2",
    "--eval_batch_size", "2", "--report_to", "none",
]  # fmt: skip
STUFF_ROWS = {i for i, c in coco_panoptic_categories().items() if not c.isthing}


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """The stand-in with 10 queries instead of 100: a photo goes through the mask head at 800 px on every
    query here (random weights, or all of them voting for row 199), which costs ~16 GB of RAM with 100."""
    architecture = {**STANDIN_ARCHITECTURE, "num_queries": 10}
    return save_hub_standin(tmp_path_factory.mktemp("hub") / "detr-resnet-50-panoptic", architecture=architecture)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three sample photos, at a third of their size (the stand-in still resizes them to 800 px)."""
    folder = tmp_path_factory.mktemp("photos")
    for path in sorted((REPO_ROOT / "sample_data" / "cvat_task_materials" / "images").iterdir())[:3]:
        with Image.open(path) as image:
            image.convert("RGB").reduce(3).save(folder / f"{path.stem}.png")
    return folder


def _run(cmd: list[str], folder, timeout: float = 900) -> subprocess.CompletedProcess:
    env, log = network_blocked_env(folder / "guard", train_env())
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert not log.exists(), log.read_text()
    return result


@pytest.fixture(scope="module")
def wall_standin(standin, tmp_path_factory):
    """The stand-in that predicts row 199 (`LABEL_199` in its config: `wall-other-merged`) on every pixel."""
    biased = tmp_path_factory.mktemp("hub") / "wall"
    shutil.copytree(standin, biased)
    weights = torch.load(biased / WEIGHTS_NAME)
    # identical queries (decoder outputs, class scores and masks alike): every pixel goes to the first one
    queries = weights["detr.model.query_position_embeddings.weight"]
    queries[:] = queries[0]
    weights["detr.class_labels_classifier.bias"][199] = 20.0  # ... which predicts row 199
    weights["mask_head.out_lay.bias"] += 10.0  # ... over the whole picture
    torch.save(weights, biased / WEIGHTS_NAME)
    return biased


def test_stuff_from_model_maps_the_merged_classes(wall_standin, photos, tmp_path, no_network, caplog):
    """`LABEL_199` is `wall-other-merged`: its pixels become `wall`, not a `misc` thing."""
    from dataset_scripts.stuff_model import main as stuff_main

    cache = tmp_path / "cache"
    argv = [str(photos), "--cache-dir", str(cache), "--model", str(wall_standin), "--threshold", "0.5"]
    with caplog.at_level(logging.WARNING):
        assert stuff_main(argv) == 0
    assert not [r for r in caplog.records if "cannot predict" in r.getMessage()]  # all 53 stuff labels resolved
    mapping = load_stuff_mapping()
    for key in sorted(p.name for p in photos.iterdir()):
        stuff = load_stuff_map(cache, key)
        present = {mapping.stuff_names[i] for i in np.unique(stuff) if i >= 0}
        assert present == {"wall"}, (key, present)


def test_predictor_and_pipeline_on_the_hub_layout(wall_standin, photos, no_network):
    from transformers import pipeline

    from finetune.inference import PanopticPredictor

    predictor = PanopticPredictor.from_pretrained(str(wall_standin))
    assert predictor.stuff_label_ids == STUFF_ROWS  # from the table: the config has no stuff_label_ids
    image = Image.open(next(photos.iterdir())).convert("RGB")
    [prediction] = predictor.predict([image])
    assert prediction.ids.shape == (image.height, image.width)
    [segment] = prediction.segments  # the queries of row 199 fused into one stuff segment
    assert (segment["label_id"], segment["name"], segment["isthing"]) == (199, "wall-other-merged", False)

    # transformers' pipeline: runs offline on the legacy files, names from config.id2label, nothing fused
    segments = pipeline("image-segmentation", model=str(wall_standin))(image)
    assert segments and {s["label"] for s in segments} == {"LABEL_199"}
    assert all(s["mask"].size == image.size for s in segments)


def test_train_evaluate_predict_push_from_default_yaml(standin, photos, tmp_path):
    out = tmp_path / "run"
    train = [
        str(BIN / "accelerate"), "launch", "-q", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(TRAIN), "--config", str(DEFAULT_CONFIG),
        "--model", str(standin), "--output_dir", str(out), "--class_map", json.dumps(SUGGESTED_CLASS_MAP),
        *SMALL_RUN, *sample_export_args(tmp_path),
    ]  # fmt: skip
    result = _run(train, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    for name, row in [("wall-other-merged", 199), ("dirt-merged", 194), ("floor-other-merged", 190)]:
        assert f"{name} (row {row})" in log, log[-3000:]
    assert "LABEL_" not in log
    final = out / "final"
    assert (final / "all_results.json").is_file()

    evaluate = [sys.executable, "finetune/evaluate.py", "--model", str(final), "--dataset", str(out / "dataset" / "panoptic"),
                "--output-json", str(tmp_path / "eval.json")]  # fmt: skip
    result = _run(evaluate, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0.0 <= json.loads((tmp_path / "eval.json").read_text())["pq"] <= 1.0

    for model in (standin, final):
        predict = [sys.executable, "finetune/predict.py", str(photos), "--model", str(model), "--batch-size", "1",
                   "--output-dir", str(tmp_path / f"pred-{model.name}"), "--quiet"]  # fmt: skip
        result = _run(predict, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]

    push = [sys.executable, "push_to_hub.py", "--model", str(final), "--repo-id", "me/site",
            "--dry-run", str(tmp_path / "upload")]  # fmt: skip
    result = _run(push, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "upload" / "README.md").is_file()
