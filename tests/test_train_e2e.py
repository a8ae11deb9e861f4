"""End to end: `accelerate launch finetune/train.py --config finetune/configs/ci.yaml` and what it writes;
the two stages freeze what they must; the default config fails fast offline."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from finetune.hub.model_card import build_model_card
from tests.train_runs import REPO_ROOT, TRAIN, accelerate_cmd, read_jsonl, run_training, sample_export_args

pytestmark = pytest.mark.slow

SAMPLE_NAMES = {"brick", "excavator", "pipe", "tile", "floor", "ground", "sky", "wall"}
STUFF = {"floor", "wall", "sky", "ground"}
FINAL_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "training_config.yaml",
    "all_results.json",
    "train_results.json",
)


@pytest.fixture(scope="module")
def sample_args(tmp_path_factory):
    return sample_export_args(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory, sample_args):
    out = tmp_path_factory.mktemp("ci") / "run"
    result = run_training(accelerate_cmd(out, *sample_args))
    assert result.returncode == 0, result.stderr[-4000:]
    return out, result


def test_final_folder(ci_run):
    out, _ = ci_run
    final = out / "final"
    for name in FINAL_FILES:
        assert (final / name).is_file(), name
    config = json.loads((final / "config.json").read_text())
    id2label = {int(k): v for k, v in config["id2label"].items()}
    assert set(id2label.values()) == SAMPLE_NAMES
    assert {id2label[i] for i in config["stuff_label_ids"]} == STUFF
    assert len(config["category_ids"]) == len(id2label)
    processor = json.loads((final / "preprocessor_config.json").read_text())
    assert processor["format"] == "coco_panoptic"
    assert processor["size"]["shortest_edge"] == 96  # ci.yaml's eval_size
    assert "eval_size: 96" in (final / "training_config.yaml").read_text()

    results = json.loads((final / "all_results.json").read_text())
    for key in ("pq", "sq", "rq", "pq_things", "pq_stuff", "box_map"):
        assert math.isfinite(results[key]) and 0.0 <= results[key] <= 1.0, key
    assert set(results["per_class_pq"]) <= SAMPLE_NAMES

    facts = json.loads((final / "train_results.json").read_text())
    assert facts["started_from"]["kind"] == "random_init" and facts["started_from"]["name"] is None
    assert facts["num_processes"] == 1 and facts["mixed_precision"] == "no" and facts["hardware"]
    assert list(facts["stages"]) == ["detection", "masks"]  # ci.yaml: 1 epoch each, evaluated
    for record in facts["stages"].values():
        assert record["epochs"] == record["planned_epochs"] == 1 and record["stopped_early"] is False
        assert record["train_seconds"] > 0 and record["eval_seconds"] > 0
    assert facts["train_runtime"] == round(sum(r["train_seconds"] for r in facts["stages"].values()), 1)
    assert facts["eval_runtime"] == round(sum(r["eval_seconds"] for r in facts["stages"].values()), 1)
    # The model card reads these records: the epochs trained and the two times, each labelled.
    card = build_model_card(
        json.loads((final / "config.json").read_text()),
        yaml.safe_load((final / "training_config.yaml").read_text()),
        results,
        "me/ci",
        train_facts=facts,
    ).content
    assert "Stage 1, **detection**" in card and "Stage 2, **masks**" in card and "in two stages" in card
    assert "— box model" in card and ": 1 epoch, batch size 4" in card
    assert " training + " in card and " evaluation (detection " in card
    assert facts["train_samples"] == 8 and facts["eval_samples"] == 4  # ci.yaml's max_*_samples
    # One file mode for the whole folder (safetensors alone used to be 0600), what `open` gives.
    umask = os.umask(0)
    os.umask(umask)
    modes = {name: (final / name).stat().st_mode & 0o777 for name in FINAL_FILES}
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_metrics_checkpoints_best_and_overlay(ci_run):
    out, result = ci_run
    records = read_jsonl(out / "metrics.jsonl")
    evals = [(r["stage"], r["epoch"]) for r in records if r["type"] == "eval"]
    assert evals == [("detection", 0), ("masks", 0)]  # ci.yaml: 1 epoch per stage, evaluated each
    assert "box_map" in records[[r["type"] for r in records].index("eval")]
    masks_eval = next(r for r in records if r["type"] == "eval" and r["stage"] == "masks")
    assert {"pq", "pq_things", "pq_stuff", "per_class_pq", "box_map"} <= set(masks_eval)
    epochs = [(r["stage"], r["epoch"]) for r in records if r["type"] == "train_epoch"]
    assert epochs == [("detection", 0), ("masks", 0)]
    assert all(math.isfinite(r["loss"]) for r in records if r["type"] in ("train", "train_epoch"))

    for name in ("detection-epoch1", "masks-epoch1"):
        checkpoint = out / "checkpoints" / name
        for part in (
            "model.safetensors",
            "optimizer.bin",
            "scheduler.bin",
            "trainer_state.json",
            "training_config.yaml",
        ):
            assert (checkpoint / part).is_file(), f"{name}/{part}"
    state = json.loads((out / "checkpoints" / "masks-epoch1" / "trainer_state.json").read_text())
    assert state["stage"] == "masks" and state["metric_name"] == "pq" and state["global_step"] == 4
    for stage in ("detection", "masks"):
        assert (out / f"best_{stage}" / "model.safetensors").is_file()
        assert (out / f"best_{stage}" / "all_results.json").is_file()
    # Ground truth | prediction, each panel enlarged to a readable width (the ci images are 96 px).
    overlay = np.asarray(Image.open(out / "prediction_overlay.png").convert("RGB"))
    assert overlay.shape[1] >= 2 * 480
    half = overlay.shape[1] // 2
    assert not np.array_equal(overlay[:, : half - 8], overlay[:, half + 8 : 2 * half])
    assert "final model saved to" in result.stderr
    # The console: one line per evaluation, no accelerate per-file save chatter, no [RANK 0] in one process.
    assert "detection epoch 1/1: box_map " in result.stderr and "masks epoch 1/1: pq " in result.stderr
    assert "Saving current state" not in result.stderr and "Model weights saved" not in result.stderr
    assert "[RANK 0]" not in result.stderr


def test_pipeline_loads_final_and_names_segments_with_dataset_labels(ci_run, tmp_path):
    import shutil

    from transformers import DetrForSegmentation, pipeline

    out, _ = ci_run
    image = Image.open(next((out / "dataset" / "panoptic" / "val").iterdir())).convert("RGB")
    segmenter = pipeline("image-segmentation", model=str(out / "final"), device="cpu")
    segments = segmenter(image, subtask="panoptic", threshold=0.0)
    assert {s["label"] for s in segments} <= SAMPLE_NAMES

    # A CI-sized model mostly predicts "no object" and faint masks: silence that class in a copy and keep every
    # query's winning pixels, so that the pipeline has segments to name; they must carry the dataset's names.
    confident = tmp_path / "confident"
    shutil.copytree(out / "final", confident)
    model = DetrForSegmentation.from_pretrained(confident)
    with torch.no_grad():
        model.detr.class_labels_classifier.bias[-1] = -1e4
    model.save_pretrained(confident)
    segments = pipeline("image-segmentation", model=str(confident), device="cpu")(
        image, subtask="panoptic", threshold=0.0, mask_threshold=0.0, overlap_mask_area_threshold=0.0
    )
    assert segments, "expected segments once no-object is silenced"
    assert {s["label"] for s in segments} <= SAMPLE_NAMES
    assert segments[0]["mask"].size == image.size


def _split(weights: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    detr = {k: v for k, v in weights.items() if k.startswith("detr.")}
    head = {k: v for k, v in weights.items() if not k.startswith("detr.")}
    assert head and all(k.startswith(("mask_head.", "bbox_attention.")) for k in head)
    return detr, head


def _assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_stages_freeze_what_they_must(ci_run, tmp_path, sample_args):
    """detection leaves mask_head/bbox_attention bit-identical; masks leaves model.detr bit-identical.

    Also the two ways to train one stage on an earlier run: `--model_name_or_path run/final` and
    `--resume_from_checkpoint run/checkpoints/detection-epochK --stages masks`.
    """
    out, _ = ci_run
    start_detr, start_head = _split(load_file(str(out / "final" / "model.safetensors")))

    small = ("--max_train_samples", "4", "--max_eval_samples", "2")  # only the weights matter here
    det = tmp_path / "det"
    result = run_training(
        accelerate_cmd(
            det,
            *sample_args,
            *small,
            "--stages",
            "detection",
            "--model_name_or_path",
            str(out / "final"),
            # 2 micro-batches of 2 images, accumulated into 1 optimiser step
            "--detection_batch_size",
            "2",
            "--gradient_accumulation_steps",
            "2",
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((det / "checkpoints" / "detection-epoch1" / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    det_detr, det_head = _split(load_file(str(det / "final" / "model.safetensors")))
    _assert_equal(det_head, start_head)
    assert any(not torch.equal(det_detr[k], start_detr[k]) for k in det_detr), (
        "detection stage trained nothing"
    )

    masks = tmp_path / "masks"
    result = run_training(
        accelerate_cmd(
            masks,
            *sample_args,
            *small,
            "--stages",
            "masks",
            # weights of the box stage's checkpoint (a stage this run does not train: weights only)
            "--resume_from_checkpoint",
            str(det / "checkpoints" / "detection-epoch1"),
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    masks_detr, masks_head = _split(load_file(str(masks / "final" / "model.safetensors")))
    _assert_equal(masks_detr, det_detr)
    assert any(not torch.equal(masks_head[k], det_head[k]) for k in masks_head), "masks stage trained nothing"


def test_default_config_offline_fails_fast_naming_quickstart(tmp_path, sample_args):
    import sys

    result = run_training(
        [
            sys.executable,
            str(TRAIN),
            "--config",
            str(REPO_ROOT / "finetune" / "configs" / "default.yaml"),
            "--output_dir",
            str(tmp_path / "offline"),
            *sample_args,
        ],
        timeout=240,  # hang guard (e.g. download retries), not a speed goal
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "quickstart.yaml" in result.stderr and "model_name_or_path" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "offline" / "final").exists()


def test_push_to_hub_inside_train_uploads_final_in_one_commit(
    tmp_path, sample_args, monkeypatch, fresh_accelerate_state
):
    """`train()` with `--push_to_hub --hub_model_id` (in this process, tiny settings) goes through
    `finetune.hub.push` (checks, card, one commit); the Hub client is the signature-checked recorder."""
    from finetune import train
    from finetune.hub import push
    from tests.hub_recorder import RecordingApi

    api = RecordingApi()
    monkeypatch.setattr(push, "HfApi", lambda: api)
    monkeypatch.setattr(push, "get_token", lambda: "hf_test_token")
    out = tmp_path / "push"
    argv = [
        "--config",
        str(REPO_ROOT / "finetune" / "configs" / "ci.yaml"),
        "--output_dir",
        str(out),
        *sample_args,
    ]
    tiny = ["--max_train_samples", "4", "--max_eval_samples", "1", "--detection_batch_size", "4"]
    push_args = ["--push_to_hub", "--hub_model_id", "me/detr-ci", "--hub_private", "true"]
    assert train.main([*argv, *tiny, "--masks_batch_size", "4", *push_args]) == 0

    # create_repo twice: the check before training (as HF Trainer), then the push's own.
    assert [name for name, _ in api.calls] == ["create_repo", "create_repo", "upload_folder"]
    create, upload = api.calls[0][1], api.calls[2][1]
    assert api.calls[1][1] == create
    assert create == {"repo_id": "me/detr-ci", "repo_type": "model", "private": True, "exist_ok": True}
    assert upload["repo_id"] == "me/detr-ci" and upload["repo_type"] == "model"
    assert set(upload["files"]) == {*FINAL_FILES, "README.md"}
    assert upload["commit_message"].startswith("Upload detr-ci (PQ ")
