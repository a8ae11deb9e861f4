"""The tiny pretrained panoptic checkpoint shipped in `pretrained/tiny-detr-panoptic/`: it loads
(`from_pretrained`, `pipeline`), the quickstart warm-starts the sample's classes from it, and its
pretraining script works (a shortened run of `finetune/make_tiny_checkpoint.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
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
    # The photo is an excavator over two stuff bands: the checkpoint (pole, COCO stuff names) finds
    # them; an empty list would mean the weights or the post-processing are broken.
    found = [s["label"] for s in segments]
    assert "excavator" in found, found
    assert len(set(found) & set(SOURCE_STUFF_LABELS)) >= 1, found
    assert all(s["label"] in labels for s in segments)
    assert all(s["mask"].size == Image.open(SAMPLE_IMAGE).size for s in segments)
    assert all(np.asarray(s["mask"]).any() for s in segments)


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def test_shipped_training_config_names_no_path_of_the_machine_it_was_built_on():
    """`training_config.yaml` is a recipe to read and reload: no absolute (temporary) folder in it."""
    config = yaml.safe_load((CHECKPOINT / "training_config.yaml").read_text())
    assert config["data"]["dataset_dir"] == "source_600_40_seed0/panoptic"  # relative to --work-dir
    absolute = [value for value in _strings(config) if Path(value).is_absolute() or value.startswith("~")]
    assert not absolute, absolute


def test_exported_training_config_is_relative_to_the_work_dir(tmp_path):
    from finetune.make_tiny_checkpoint import portable_training_config

    work = tmp_path / "work"
    text = yaml.safe_dump(
        {"data": {"dataset_dir": str(work / "source" / "panoptic")}, "run": {"output_dir": str(work / "run")}}
    )
    portable = portable_training_config(text, work)
    assert portable.startswith("# ")  # says what the paths are relative to
    assert yaml.safe_load(portable) == {"data": {"dataset_dir": "source/panoptic"}, "run": {"output_dir": "run"}}
    outside = yaml.safe_dump({"data": {"dataset_dir": str(tmp_path / "elsewhere")}, "run": {"output_dir": None}})
    with pytest.raises(ValueError, match="dataset_dir"):
        portable_training_config(outside, work)


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
    exported = yaml.safe_load((out / "training_config.yaml").read_text())
    assert exported["data"]["dataset_dir"] == "source_12_4_seed0/panoptic"
    assert exported["run"]["output_dir"] == "run"
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


def test_shipped_model_card_is_what_the_pretraining_script_writes():
    """The shipped README.md cannot drift from `make_tiny_checkpoint.model_card` (only the measured
    wall clock is read back from it)."""
    import re

    from finetune.make_tiny_checkpoint import NUM_IMAGES, model_card

    shipped = (CHECKPOINT / "README.md").read_text()
    minutes = float(re.search(r"([0-9.]+) min\s+wall clock", shipped).group(1))
    results = json.loads((CHECKPOINT / "all_results.json").read_text())
    card = model_card(results, NUM_IMAGES, "python finetune/make_tiny_checkpoint.py", minutes, (0, NUM_IMAGES - 1))
    assert shipped == card
