"""Does the whole chain learn? A tiny DETR trained from scratch on a synthetic set, val PQ printed.

    python bench/learning.py [--work-dir DIR] [--train-images N] [--detection-minutes M] ...

Generates a clean synthetic set with the sample generator (`dataset_scripts/make_sample.py`: two
textured stuff bands and 1-2 large things), converts it with `dataset_scripts/cvat_to_panoptic.py`
and `dataset_scripts/panoptic_builder.py`, trains the two stages with the project's pieces
(`finetune.data`, `finetune.modeling.loading.load_model`, `finetune.modeling.stages`) in a compact loop, and scores
val PQ with `finetune.evaluation.panoptic_quality.PQAccumulator` on DETR's panoptic post-processing (stuff
fused with ``label_ids_to_fuse``). Goal: PQ >= 0.5 in about 10 minutes of CPU.

The recipe (`RECIPE`, and the README section "Training from scratch: what it takes") departs from a
naive one where a naive one cannot learn at all. `finetune.modeling.loading.load_model` does the first four
for every random init (`prepare_random_init`), the quickstart included:

* `reference_detr_init`: transformers initialises the object queries with N(0, 0.02) instead of DETR's
  N(0, 1), so every query predicts the same thing; the reference initialisation fixes it;
* `amplify_mask_head_attention_input`: the mask head hears a query only through softmax attention maps
  with entries ~1/(heads * H * W); without a gain it sat at dice loss 0.70 for 400+ updates;
* `revive_residual_branches`: a randomly initialised timm ResNet zero-initialises the last
  BatchNorm of every residual block, and DETR freezes every BatchNorm, so those branches output
  zero forever and their convolutions get an exactly-zero gradient (12 of 15 trainable backbone
  tensors of resnet18);
* `calibrate_frozen_batchnorm`: frozen BatchNorm statistics taken from 16 training images, so that
  the random backbone is normalised;
* the random backbone then stays frozen (`backbone_lr` 0): trained under frozen BatchNorm, its
  activations grow until the attention backward overflows (non-finite gradient, finite loss);
* one torch thread, flushed denormals and fused AdamW (per-step time 2-4 s -> 0.1-0.2 s on the
  shared 2-core machine, see the README).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import finetune.modeling.loading
from dataset_scripts.cvat_to_panoptic import ConversionOptions, convert_exports
from dataset_scripts.make_sample import STUFF_LABELS, synthetic_plans, write_dataset
from dataset_scripts.panoptic_builder import build_hf_dataset, load_categories
from dataset_scripts.panoptic_format import rgb2id
from finetune.data import (
    PanopticCollator,
    PanopticTrainingDataset,
    build_dataloader,
    build_eval_transforms,
    build_image_processor,
    build_train_transforms,
    category_to_label_map,
)
from finetune.evaluation.panoptic_quality import PQAccumulator
from finetune.inference.core import PostProcessing, predict_batch
from finetune.modeling.loading import load_model
from finetune.modeling.stages import compute_stage_loss, param_groups

logger = logging.getLogger("bench.learning")

# Tiny random-init DETRs produce denormal floats in the backward pass; on x86 CPUs they are ~10x
# slower than normal floats (measured: one step 12 s -> 1.5 s). Flushing them is harmless. Set at
# import, before torch starts its worker threads (they inherit the setting).
torch.set_flush_denormal(True)

RECIPE: dict[str, Any] = {
    "image_size": (96, 72),
    "things": ["brick", "pipe", "tile", "excavator"],
    "min_things": 1,
    "max_things": 2,
    "model": {
        "backbone": "resnet18",
        "use_timm_backbone": True,
        "use_pretrained_backbone": False,
        "d_model": 64,
        "encoder_layers": 1,
        "decoder_layers": 2,
        "encoder_attention_heads": 8,
        "decoder_attention_heads": 8,
        "encoder_ffn_dim": 128,
        "decoder_ffn_dim": 128,
        "num_queries": 8,
        "dilation": True,  # DC5: stride 16, so a 72 px image still gives a 5x6 encoder map
        "dropout": 0.0,
        "auxiliary_loss": True,
    },
    # The random backbone stays frozen (backbone_lr 0): calibrated random ResNet features are enough here,
    # a step costs half as much, and a *trained* random backbone under frozen BatchNorm has no
    # normalisation, so its activations grow until the gradient overflows (README).
    "detection": {"lr": 5e-4, "backbone_lr": 0.0, "batch_size": 8},
    "masks": {"lr": 1e-3, "backbone_lr": 0.0, "batch_size": 8},
    "weight_decay": 1e-4,
    "max_grad_norm": 0.1,
    "threshold": 0.5,
}


def make_dataset(work_dir: Path, num_train: int, num_val: int, seed: int) -> tuple[Any, list[dict]]:
    """Generate, convert and build the synthetic set (cached in ``work_dir``)."""
    width, height = RECIPE["image_size"]
    tag = f"{width}x{height}_{num_train}_{num_val}_{seed}_{RECIPE['min_things']}-{RECIPE['max_things']}_{'-'.join(RECIPE['things'])}"
    panoptic_dir = work_dir / f"panoptic_{tag}"
    if not panoptic_dir.is_dir():
        exports_dir = work_dir / f"cvat_{tag}"
        plans = synthetic_plans(
            num_train + num_val,
            seed=seed,
            size=RECIPE["image_size"],
            exports=1,
            min_things=RECIPE["min_things"],
            max_things=RECIPE["max_things"],
            thing_labels=RECIPE["things"],
        )
        write_dataset(exports_dir, plans, overwrite=True)
        options = ConversionOptions(
            stuff_labels=list(STUFF_LABELS),
            val_ratio=num_val / (num_train + num_val),
            seed=seed,
            overwrite=True,
        )
        convert_exports(sorted(p for p in exports_dir.iterdir() if p.is_dir()), panoptic_dir, options)
    dataset = build_hf_dataset(panoptic_dir, cache_dir=work_dir / "hf_cache")
    return dataset, load_categories(dataset)


def train_stage(
    model, stage, loader, minutes: float, max_steps: int, cfg: dict, work_dir: Path, log_every: int = 50
) -> dict:
    """Train one stage for ``minutes`` of wall time or ``max_steps`` steps (0: no step limit)."""
    groups = param_groups(model, stage, cfg["lr"], cfg["backbone_lr"], RECIPE["weight_decay"])
    optimizer = torch.optim.AdamW(groups, fused=True)  # 3x faster than the per-tensor loop on CPU
    model.train()
    start, step, epoch = time.monotonic(), 0, 0
    deadline = start + 60 * minutes
    running: dict[str, float] = {}
    max_steps = max_steps or math.inf
    while step < max_steps and time.monotonic() < deadline:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            loss, parts = compute_stage_loss(
                model, stage, batch["pixel_values"], batch["pixel_mask"], batch["labels"]
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{stage}: non-finite loss at step {step} ({loss.item()}); lower the lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for g in groups for p in g["params"]], RECIPE["max_grad_norm"]
            )
            step += 1
            if not torch.isfinite(grad_norm):
                # Measured cause (README): a *trainable* random backbone under frozen BatchNorm has no
                # normalisation, its activations grow with every update (layer4 up to 8e4 after 184 steps
                # at backbone lr 2e-4), the loss stays finite (LayerNorm) but the encoder's attention
                # backward overflows. Keep the state for `torch.autograd.detect_anomaly`.
                path = work_dir / f"nonfinite_{stage}.pt"
                torch.save({"model": model.state_dict(), "batch": batch, "step": step}, path)
                raise FloatingPointError(
                    f"{stage}: non-finite gradient at step {step} (loss {loss.item():.4f}); state in {path}"
                )
            optimizer.step()
            for key in ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"):
                if key in parts:
                    running[key] = 0.9 * running.get(key, float(parts[key])) + 0.1 * float(parts[key])
            if step % log_every == 0:
                logger.info(
                    "%s step %d epoch %d %.0fs %s",
                    stage,
                    step,
                    epoch,
                    time.monotonic() - start,
                    " ".join(f"{k} {v:.3f}" for k, v in running.items()),
                )
            if time.monotonic() >= deadline or step >= max_steps:
                break
        epoch += 1
    seconds = round(time.monotonic() - start, 1)
    return {"steps": step, "epochs": epoch, "seconds": seconds, **running}


@torch.no_grad()
def evaluate_pq(model, loader, hf_split, categories, processor, threshold: float) -> dict[str, Any]:
    """Val PQ: DETR's panoptic post-processing (stuff fused) through the inference core, `PQAccumulator`."""
    model.eval()
    accumulator = PQAccumulator(categories)
    stuff = frozenset(i for i, c in enumerate(categories) if not c["isthing"])
    # transformers' default mask thresholds (what this bench has always used)
    post = PostProcessing(threshold, 0.5, 0.8, stuff)
    row_of = {int(image_id): i for i, image_id in enumerate(hf_split["image_id"])}
    for batch in loader:
        sizes = [tuple(target["orig_size"].tolist()) for target in batch["labels"]]
        output = predict_batch(model, processor, batch["pixel_values"], batch["pixel_mask"], sizes, post)
        for target, prediction in zip(batch["labels"], output.predictions, strict=True):
            row = hf_split[row_of[int(target["image_id"])]]
            pred_segments = [
                {"id": s["id"], "category_id": int(categories[s["label_id"]]["id"])}
                for s in prediction.segments
            ]
            gt_ids = rgb2id(np.asarray(row["panoptic"].convert("RGB")))
            accumulator.update(
                prediction.ids, pred_segments, gt_ids, list(row["segments_info"]), image_id=row["image_id"]
            )
    return accumulator.compute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/bench_learning"))
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--val-images", type=int, default=50)
    parser.add_argument("--detection-minutes", type=float, default=5.0)
    parser.add_argument("--masks-minutes", type=float, default=3.5)
    parser.add_argument("--detection-steps", type=int, default=0, help="stop after N steps (0: time only)")
    parser.add_argument("--masks-steps", type=int, default=0, help="stop after N steps (0: time only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see the README on why)")
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--transformers-init", action="store_true", help="skip reference_detr_init")
    parser.add_argument("--load-detection", type=Path, default=None, help="detection.pt of an earlier run")
    parser.add_argument("--recipe", type=str, default=None, help="JSON merged into RECIPE (experiments)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("dataset_scripts").setLevel(logging.WARNING)
    if args.recipe:
        for key, value in json.loads(args.recipe).items():
            RECIPE[key] = {**RECIPE[key], **value} if isinstance(value, dict) else value
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.work_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    dataset, categories = make_dataset(args.work_dir, args.train_images, args.val_images, args.seed)
    logger.info("dataset ready in %.0fs: %s", time.monotonic() - t0, {k: len(v) for k, v in dataset.items()})
    c2l = category_to_label_map(categories)
    width, height = RECIPE["image_size"]
    short = min(width, height)
    train_transforms = build_train_transforms(
        scales=[short - 8, short, short + 8],
        max_size=2 * max(width, height),
        hflip_prob=0.5,
        random_crop=False,
    )
    train_set = PanopticTrainingDataset(dataset["train"], c2l, train_transforms)
    val_set = PanopticTrainingDataset(
        dataset["val"], c2l, build_eval_transforms(short, 2 * max(width, height))
    )
    collator = PanopticCollator()

    if args.transformers_init:  # experiment: keep transformers' N(0, 0.02) init of the transformer and heads
        finetune.modeling.loading.reference_detr_init = lambda model: None
    calibration = collator([train_set[(i, args.seed)] for i in range(16)])["pixel_values"]
    model = load_model(None, categories, config_overrides=RECIPE["model"], calibration_images=calibration)

    results: dict[str, Any] = {}
    budgets = {
        "detection": (args.detection_minutes, args.detection_steps),
        "masks": (args.masks_minutes, args.masks_steps),
    }
    if args.load_detection:  # experiments on the mask stage: reuse a saved detection stage
        model.load_state_dict(torch.load(args.load_detection, weights_only=True))
        budgets.pop("detection")
    for stage, (minutes, max_steps) in budgets.items():
        cfg = RECIPE[stage]
        loader = build_dataloader(
            train_set, cfg["batch_size"], True, args.num_workers, False, collator, args.seed
        )
        results[stage] = train_stage(model, stage, loader, minutes, max_steps, cfg, args.work_dir)
        logger.info("%s done: %s", stage, results[stage])
        torch.save(model.state_dict(), args.work_dir / f"{stage}.pt")

    processor = build_image_processor(short, 2 * max(width, height))
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=8, collate_fn=collator)
    train_minutes = (time.monotonic() - t0) / 60
    names = {c["id"]: c["name"] for c in categories}
    print(f"\nval images {len(val_set)}, data + training {train_minutes:.1f} min")
    for threshold in sorted({RECIPE["threshold"], 0.3, 0.7}):
        metrics = evaluate_pq(model, val_loader, dataset["val"], categories, processor, threshold)
        marker = "  <- recipe threshold" if threshold == RECIPE["threshold"] else ""
        print(
            f"threshold {threshold:.1f}: PQ {metrics['All']['pq']:.3f}  PQ things {metrics['Things']['pq']:.3f}"
            f"  PQ stuff {metrics['Stuff']['pq']:.3f}  (SQ {metrics['All']['sq']:.3f}, RQ {metrics['All']['rq']:.3f}){marker}"
        )
        if threshold == RECIPE["threshold"]:
            headline = metrics
    metrics = headline
    print("per-class PQ: " + ", ".join(f"{names[k]} {v['pq']:.2f}" for k, v in metrics["per_class"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
