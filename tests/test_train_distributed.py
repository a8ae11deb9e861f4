"""Two processes (`torchrun --nproc_per_node 2`, MULTI_CPU/gloo): the run finishes, logs once, saves the
final model, and its merged evaluation equals a single-process evaluation of the same weights."""

from __future__ import annotations

import json
import math

import pytest
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import DetrForSegmentation, DetrImageProcessor

from dataset_scripts.panoptic_builder import build_hf_dataset, load_categories
from finetune.data.collate import PanopticCollator
from finetune.data.dataset import PanopticTrainingDataset, category_to_label_map
from finetune.data.transforms import build_eval_transforms
from finetune.evaluation.loop import EvalContext, evaluate
from tests.train_runs import BIN, CI_CONFIG, TRAIN, free_port, read_jsonl, run_training, sample_export_args

pytestmark = pytest.mark.slow


def test_two_process_run_is_sane_and_evaluates_like_one_process(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        str(BIN / "torchrun"),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),  # from the OS: a fixed port clashes between pytest-xdist workers
        str(TRAIN),
        "--config",
        str(CI_CONFIG),
        "--output_dir",
        str(out),
        "--eval_batch_size",
        "1",  # no padding: each image's prediction does not depend on its batch neighbours
        *sample_export_args(tmp_path),
    ]
    result = run_training(cmd)
    assert result.returncode == 0, result.stderr[-4000:]

    records = read_jsonl(out / "metrics.jsonl")
    evals = [r for r in records if r["type"] == "eval"]
    assert [(r["stage"], r["epoch"]) for r in evals] == [
        ("detection", 0),
        ("masks", 0),
    ]  # written once, not per rank
    assert evals[-1]["num_images"] == 4  # ci.yaml's max_eval_samples, split 2 + 2 over the processes
    results = json.loads((out / "final" / "all_results.json").read_text())
    assert all(math.isfinite(results[k]) for k in ("pq", "sq", "rq", "box_map"))
    assert (out / "final" / "model.safetensors").is_file()

    # Single-process evaluation of the same weights on the same images.
    dataset = build_hf_dataset(out / "dataset" / "panoptic", cache_dir=tmp_path / "arrow")
    categories = load_categories(dataset)
    eval_split = dataset["val"].select(range(4))
    model = DetrForSegmentation.from_pretrained(out / "final")
    processor = DetrImageProcessor.from_pretrained(out / "final")
    eval_set = PanopticTrainingDataset(
        eval_split, category_to_label_map(categories), build_eval_transforms(96, 128)
    )
    loader = DataLoader(eval_set, batch_size=1, collate_fn=PanopticCollator())
    context = EvalContext(
        hf_split=eval_split,
        categories=categories,
        image_processor=processor,
        stuff_label_ids=set(model.config.stuff_label_ids),
        threshold=0.0,  # ci.yaml
    )
    single = evaluate(model, loader, Accelerator(cpu=True), context, panoptic=True)
    for key in ("pq", "sq", "rq", "pq_things", "pq_stuff", "box_map"):
        assert single[key] == pytest.approx(results[key], abs=1e-6), key
