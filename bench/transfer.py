"""Does the tiny pretrained checkpoint transfer? Fine-tuning it vs training from scratch, same budget.

    python bench/transfer.py [--work-dir DIR] [--train-images 160] [--val-images 40] [--seed 0]
        [--detection-epochs 15] [--masks-epochs 8] [-- more finetune/train.py options for both arms]

Target set: clean synthetic 192x144 scenes (the source domain's size) with the bundled sample's
classes (brick, pipe, tile, excavator over floor/wall/sky/ground; `dataset_scripts/sample/synthetic_set.py`),
drawn from the *target* scene seeds (`dataset_scripts/sample/seeds.py`): none of its images or stuff
layouts is one the checkpoint was pretrained on (tests/test_seed_ranges.py).
For the checkpoint (`pretrained/tiny-detr-panoptic`, pretrained on brick, excavator and pole (= pipe)
scenes with COCO-named stuff) the classes are partly new: tile has no class-head row to start from, pipe and the
stuff come through `class_map`.

Two arms, both `accelerate launch finetune/train.py --config finetune/configs/quickstart.yaml` on the
same data, with the same seed, epochs and batch size (so the same number of optimiser steps):

* `pretrained`: the quickstart recipe as is: the checkpoint, class-head warm start (names +
  `class_map`), box stage, then the mask head with DETR frozen;
* `scratch`: the same architecture from a random init (`--model_name_or_path null`, the
  checkpoint's `config_overrides`), at the from-scratch learning rates (5e-4 box, 1e-3 masks: the
  measured recipe of bench/learning.py).

Two more arms measure the defaults of the `trainer:` options small-data fine-tuners expect, against
`pretrained` (its PQ and training time): `early_stopping` (`--arms pretrained,early_stopping`) is
`pretrained` evaluated after every epoch with `trainer.early_stopping_patience` (`--patience`); `ema`
(`--arms pretrained,ema`) is `pretrained` with `trainer.ema: true`.

Prints each arm's `final/all_results.json`, its training time, and the PQ difference. Goal: pretrained -
scratch >= 0.15 PQ.

Measured (`python bench/transfer.py --arms pretrained,early_stopping,scratch`, 2 CPU cores shared with
other jobs (load average 4-8), one thread; 56 min for the three arms):

    160 train / 40 val scenes 192x144 (target scene seeds, ...), 15 + 8 epochs (~460 steps), seed 0
        pretrained: PQ 0.838  things 0.716  stuff 0.959  box mAP 0.604  (SQ 0.868, RQ 0.960)
        per-class PQ: brick 0.83, excavator 0.60, pipe 0.67, tile 0.76, floor 0.94, ground 0.93, sky 0.99, wall 0.98
        1702 s (training run, evaluations included)
    early_stopping: PQ 0.802  things 0.645  stuff 0.959  box mAP 0.561  (SQ 0.865, RQ 0.915)
        per-class PQ: brick 0.83, excavator 0.48, pipe 0.61, tile 0.66, floor 0.93, ground 0.93, sky 0.99, wall 0.98
        878 s (training run, evaluations included)
           scratch: PQ 0.442  things 0.055  stuff 0.829  box mAP 0.453  (SQ 0.566, RQ 0.535)
        per-class PQ: brick 0.12, excavator 0.00, pipe 0.00, tile 0.10, floor 0.65, ground 0.76, sky 0.95, wall 0.96
        748 s (training run, evaluations included)
    pretrained - scratch: PQ +0.396, things PQ +0.661
    early_stopping - pretrained: PQ -0.036 in 0.52x the time

Early stopping (patience 3) stops the box stage after 8 of 15 epochs and the mask stage after 6 of 8,
and loses 0.036 PQ (things 0.071: excavator 0.48 against 0.60, tile 0.66 against 0.76): it stays off
by default. `--arms ema` (run at the same time as the three arms above, so its time is not comparable):
ema PQ 0.840 (things 0.721, box mAP 0.593) against pretrained 0.838 (0.716, 0.604): +0.002 PQ, within
the noise of 40 val images, so EMA stays off too. (Before the target set left the pretraining scenes,
the same bench gave pretrained 0.816, scratch 0.419, early stopping 0.707, EMA 0.820.)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import yaml

from dataset_scripts.sample.source_domain import SOURCE_SIZE
from dataset_scripts.sample.synthetic_set import sample_classes_set
from finetune.training.launch_run import REPO_ROOT, launch_training, summarize

logger = logging.getLogger("bench.transfer")

QUICKSTART = REPO_ROOT / "finetune" / "configs" / "quickstart.yaml"
PRETRAIN_CONFIG = REPO_ROOT / "finetune" / "configs" / "tiny_pretrain.yaml"
IMAGE_SIZE = SOURCE_SIZE  # the size of the checkpoint's source scenes


def scratch_args() -> list[str]:
    """The `scratch` arm: the checkpoint's architecture from a random init, from-scratch learning rates."""
    overrides = yaml.safe_load(PRETRAIN_CONFIG.read_text(encoding="utf-8"))["model"]["config_overrides"]
    return [
        "--model_name_or_path", "null", "--config_overrides", json.dumps(overrides), "--class_map", "{}",
        "--detection_lr", "5e-4", "--masks_lr", "1e-3",
    ]  # fmt: skip


def arm_args(arm: str, patience: int) -> list[str]:
    """The `finetune/train.py` options of an arm, on top of the shared budget."""
    if arm == "pretrained":
        return []
    if arm == "scratch":
        return scratch_args()
    if arm == "early_stopping":  # evaluated every epoch: the cost of early stopping is part of the arm
        return ["--eval_every_epochs", "1", "--early_stopping_patience", str(patience)]
    if arm == "ema":  # the EMA weights are what is evaluated and saved
        return ["--ema", "true"]
    raise SystemExit(f"unknown arm {arm!r} (pretrained, scratch, early_stopping, ema)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/bench_transfer"))
    parser.add_argument("--train-images", type=int, default=160)
    parser.add_argument("--val-images", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="scene, split and training seed")
    parser.add_argument("--detection-epochs", type=int, default=15)
    parser.add_argument("--masks-epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--arms",
        default="pretrained,scratch",
        help="comma-separated arms: pretrained, scratch, early_stopping, ema",
    )
    parser.add_argument(
        "--patience", type=int, default=3, help="early_stopping arm: evaluations without improvement"
    )
    parser.add_argument("train_args", nargs="*", help="after --: finetune/train.py options for both arms")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("dataset_scripts").setLevel(logging.WARNING)

    arms = args.arms.split(",")
    for arm in arms:
        arm_args(arm, args.patience)  # an unknown arm stops here, before any data or training
    data = sample_classes_set(args.work_dir, args.train_images, args.val_images, IMAGE_SIZE, args.seed)
    budget = [
        "--dataset_dir", str(data), "--seed", str(args.seed),
        "--detection_epochs", str(args.detection_epochs), "--masks_epochs", str(args.masks_epochs),
        "--detection_batch_size", str(args.batch_size), "--masks_batch_size", str(args.batch_size),
        "--eval_every_epochs", "0", "--report_to", "", "--save_total_limit", "1",
    ]  # fmt: skip
    results, seconds = {}, {}
    for arm in arms:
        started = time.monotonic()
        results[arm] = launch_training(
            QUICKSTART, args.work_dir / arm, [*budget, *arm_args(arm, args.patience), *args.train_args]
        )
        seconds[arm] = time.monotonic() - started
    steps = -(-args.train_images // args.batch_size) * (args.detection_epochs + args.masks_epochs)
    print(
        f"\n{args.train_images} train / {args.val_images} val scenes {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} (target scene "
        f"seeds, none of the checkpoint's pretraining scenes), {args.detection_epochs} + {args.masks_epochs} epochs "
        f"(~{steps} steps), seed {args.seed}\nmethod: one training run per arm, the arms one after another "
        "(not interleaved, no repeat); the metrics depend on the seed only, each time is that one run's wall clock"
    )
    for arm, res in results.items():
        print(f"{arm:>14}: {summarize(res)}\n    {seconds[arm]:.0f} s (training run, evaluations included)")
    if {"pretrained", "scratch"} <= set(results):
        gain = results["pretrained"]["pq"] - results["scratch"]["pq"]
        things = results["pretrained"]["pq_things"] - results["scratch"]["pq_things"]
        print(f"pretrained - scratch: PQ {gain:+.3f}, things PQ {things:+.3f}")
    for variant in ("early_stopping", "ema"):
        if {"pretrained", variant} <= set(results):
            gain = results[variant]["pq"] - results["pretrained"]["pq"]
            ratio = seconds[variant] / seconds["pretrained"]
            print(f"{variant} - pretrained: PQ {gain:+.3f} in {ratio:.2f}x the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
