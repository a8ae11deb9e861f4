"""The tiny pretrained panoptic checkpoint shipped in `pretrained/tiny-detr-panoptic/`: it loads
(`from_pretrained`, `pipeline`), the quickstart warm-starts the sample's classes from it, and its
pretraining script works (a shortened run of `finetune/make_tiny_checkpoint.py`)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from dataset_scripts.sample.source_domain import SAMPLE_CLASS_MAP, SOURCE_STUFF_LABELS, SOURCE_THINGS
from finetune.config import parse_config
from tests.train_runs import REPO_ROOT

CHECKPOINT = REPO_ROOT / "pretrained" / "tiny-detr-panoptic"
QUICKSTART = REPO_ROOT / "finetune" / "configs" / "quickstart.yaml"
SAMPLE_IMAGE = REPO_ROOT / "sample_data" / "cvat_task_machines" / "images" / "machines_000.jpg"
# The bundled sample's categories, in the converter's label order (things by name, then stuff).
SAMPLE_CATEGORIES = [
    {"id": i, "name": name, "isthing": i <= 4}
    for i, name in enumerate(["brick", "excavator", "pipe", "tile", "floor", "ground", "sky", "wall"], 1)
]


def test_shipped_folder_is_small_and_half_precision():
    files = {p.name: p.stat().st_size for p in CHECKPOINT.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(files)
    assert sum(files.values()) <= 20 * 1024 * 1024
    with safe_open(str(CHECKPOINT / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_slice(k).get_dtype() for k in weights.keys()}  # noqa: SIM118 (safe_open is not iterable)
    assert "F16" in dtypes and "F32" not in dtypes
    config = json.loads((CHECKPOINT / "config.json").read_text())
    names = set(config["id2label"].values())
    assert names == set(SOURCE_THINGS) | set(SOURCE_STUFF_LABELS)
    assert {config["id2label"][str(i)] for i in config["stuff_label_ids"]} == set(SOURCE_STUFF_LABELS)


def test_from_pretrained_and_pipeline():
    from transformers import DetrForSegmentation, pipeline

    model = DetrForSegmentation.from_pretrained(CHECKPOINT)
    assert next(model.parameters()).dtype == torch.float32  # float16 on disk, float32 in memory
    segmenter = pipeline("image-segmentation", model=str(CHECKPOINT))
    segments = segmenter(Image.open(SAMPLE_IMAGE).convert("RGB"), subtask="panoptic", threshold=0.3)
    labels = set(model.config.id2label.values())
    assert all(s["label"] in labels for s in segments)
    assert all(s["mask"].size == Image.open(SAMPLE_IMAGE).size for s in segments)


def test_quickstart_warm_starts_the_sample_classes():
    """Same-named things copy their class-head rows, pipe and the stuff rows come through `class_map`,
    tile (a new class) keeps a fresh init; every other tensor is the checkpoint's."""
    from transformers import DetrForSegmentation

    from finetune.modeling.loading import load_model

    config = parse_config(["--config", str(QUICKSTART)])
    assert config.model.model_name_or_path == "pretrained/tiny-detr-panoptic"
    assert config.model.class_map == SAMPLE_CLASS_MAP
    assert config.run.stages == ["detection", "masks"] and config.masks.backbone_lr == 0.0
    pretrained = DetrForSegmentation.from_pretrained(CHECKPOINT)
    model = load_model(str(CHECKPOINT), SAMPLE_CATEGORIES, config.model.class_map)
    old = pretrained.detr.class_labels_classifier
    new = model.detr.class_labels_classifier
    source_row = {name: int(i) for i, name in pretrained.config.id2label.items()}
    for label, name in model.config.id2label.items():
        source = SAMPLE_CLASS_MAP.get(name, name)
        if source in source_row:
            torch.testing.assert_close(new.weight[label], old.weight[source_row[source]])
        else:
            assert name == "tile"
            assert not torch.equal(new.weight[label], old.weight[0])
    torch.testing.assert_close(new.bias[-1], old.bias[-1])  # no-object row
    body = {k: v for k, v in pretrained.state_dict().items() if "class_labels_classifier" not in k}
    ours = model.state_dict()
    for key, value in body.items():
        assert torch.equal(ours[key], value), key


@pytest.mark.slow
def test_shortened_pretraining_writes_a_loadable_checkpoint(tmp_path):
    from transformers import DetrForSegmentation

    from finetune import make_tiny_checkpoint

    out = tmp_path / "tiny"
    code = make_tiny_checkpoint.main(
        [
            "--out", str(out), "--work-dir", str(tmp_path / "work"), "--num-images", "12", "--num-val", "4",
            "--", "--detection_epochs", "1", "--masks_epochs", "1", "--logging_steps", "1",
        ]
    )  # fmt: skip
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32"
    assert set(config["id2label"].values()) == set(SOURCE_THINGS) | set(SOURCE_STUFF_LABELS)
    assert "tiny-detr-panoptic" in (out / "README.md").read_text()
    results = json.loads((out / "all_results.json").read_text())
    assert 0.0 <= results["pq"] <= 1.0
    model = DetrForSegmentation.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.slow
def test_quickstart_recipe_runs_from_the_checkpoint(tmp_path):
    """`quickstart.yaml` shortened (1 epoch per stage, 8 images): the real recipe from the shipped
    checkpoint, both stages, through `accelerate launch`; the result is labelled with the sample's classes."""
    from tests.train_runs import BIN, TRAIN, run_training, sample_export_args

    out = tmp_path / "qs"
    cmd = [
        str(BIN / "accelerate"), "launch", "-q", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(TRAIN), "--config", str(QUICKSTART),
        "--output_dir", str(out), "--detection_epochs", "1", "--masks_epochs", "1",
        "--max_train_samples", "8", "--max_eval_samples", "4", "--report_to", "",
        *sample_export_args(tmp_path),
    ]  # fmt: skip
    result = run_training(cmd)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Class head: 7/8 classes warm-started" in result.stderr
    config = json.loads((out / "final" / "config.json").read_text())
    assert set(config["id2label"].values()) == {c["name"] for c in SAMPLE_CATEGORIES}
    results = json.loads((out / "final" / "all_results.json").read_text())
    assert 0.0 <= results["pq"] <= 1.0 and 0.0 <= results["box_map"] <= 1.0
