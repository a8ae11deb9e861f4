"""Train-step speed of the two stages against the tutorial path, equal work on both sides, in the same run.

For each model config (`tiny`: `finetune.modeling.TINY_DETR_ARCHITECTURE`, the tests' model; `r50`: the
architecture of facebook/detr-resnet-50-panoptic, random init) it times whole optimizer steps (forward, loss,
backward, AdamW) on synthetic construction-like scenes (two stuff bands, a few rectangular things) at a fixed
size. Batches are built BEFORE the timer on both sides, as DataLoader workers would: ours with
`finetune.data.targets.panoptic_to_target` + `PanopticCollator`, the tutorial's with
`DetrImageProcessor(format="coco_panoptic")` from the PIL image + panoptic PNG + segments_info.

Rows (each a ratio of two paths timed in the same run, steps interleaved):

* `detection`: the same parameters train on both sides (`finetune.modeling.stages.param_groups`: `model.detr`
  without the ResNet stem and layer1; mask head frozen) with the same box-only loss. Ours:
  `compute_stage_loss(model, "detection", ...)`; tutorial: `model.detr(pixel_values, pixel_mask, labels)`.
  Equal work: the ratio is ~1 by design; it shows that our path adds no overhead.
* `masks`: the same parameters (mask head + `bbox_attention`) with the same gradients. Ours: the frozen
  DETR under `no_grad` without its box loss (constants), one matching per image, and the mask head on the
  matched queries only; tutorial: the full `DetrForSegmentation(..., labels=...)` forward with `model.detr`
  frozen (requires_grad False). (The figures below were measured before ours dropped the box loss.)
* `skip-masks`: what stage 1 saves by not running the mask head at all. Ours: the detection step above;
  tutorial: the full panoptic step training everything, mask head included (what a one-stage
  fine-tuning does). Not equal work: this row measures skipped work, by design.

    python bench/train_speed.py [--configs tiny,r50] [--steps N] [--warmup N] [--batch-size B] [--size 480x640]
        [--threads T]

Defaults: tiny 2 warm-up + 6 timed steps of 2 images, r50 1 warm-up + 3 timed steps of 1 image; 1 thread.
The per-step times reported are medians over the timed steps; the paths alternate step by step, in
alternating order (ABBA), so that a load change on the shared machine hits them alike.

Measured on the shared 2-core dev machine (load average ~5), ours/tutorial:

    python bench/train_speed.py --configs tiny --threads 1                                   (1.3 CPU-min)
        detection 0.97x, masks 1.17x, skip-masks 2.01x   (480x640, batch 2, 6 steps)
    python bench/train_speed.py --configs r50 --threads 1 --size 240x320 --steps 4 --warmup 2  (1.7 CPU-min)
        detection 0.92x, masks 8.69x, skip-masks 7.18x   (batch 1; r50 masks: 0.94 s vs 8.20 s per step)

The equal-work detection row moved between 0.92x and 1.40x across r50 runs of 2-4 steps: the noise of the
shared machine, not a difference of the two paths (they run the same forward).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import DetrConfig, DetrForSegmentation, DetrImageProcessor

from dataset_scripts.panoptic_format import segment_stats, write_panoptic_png
from finetune.data.collate import PanopticCollator
from finetune.data.targets import panoptic_to_target
from finetune.modeling.loading import TINY_DETR_ARCHITECTURE
from finetune.modeling.stages import compute_stage_loss, param_groups

logger = logging.getLogger("train_speed")

# label = category id (the tutorial path's processor copies category_id into class_labels)
CATEGORIES = [("excavator", True), ("pipe", True), ("person", True), ("floor", False), ("wall", False)]
THING_LABELS = [i for i, (_, isthing) in enumerate(CATEGORIES) if isthing]
FLOOR, WALL = 3, 4
DEFAULTS = {
    "tiny": {"steps": 6, "warmup": 2, "batch_size": 2},
    "r50": {"steps": 3, "warmup": 1, "batch_size": 1},
}


def model_config(name: str) -> DetrConfig:
    """`tiny` = `finetune.modeling.loading.TINY_DETR_ARCHITECTURE` (the tests' model); `r50` = facebook/detr-resnet-50-panoptic's architecture."""
    common = {
        "use_timm_backbone": True,
        "use_pretrained_backbone": False,
        "num_labels": len(CATEGORIES),
        "auxiliary_loss": True,
    }
    if name == "tiny":
        return DetrConfig(**{**TINY_DETR_ARCHITECTURE, **common})
    if name == "r50":
        return DetrConfig(
            backbone="resnet50", d_model=256, encoder_layers=6, decoder_layers=6, num_queries=100, **common
        )
    raise ValueError(f"unknown config {name!r}: expected tiny or r50")


@dataclass
class Scene:
    image: Image.Image
    ids: np.ndarray  # (H, W) int64 segment ids
    segments_info: list[dict]
    file_name: str


def make_scene(rng: np.random.Generator, height: int, width: int, index: int) -> Scene:
    """Wall above floor (wavy horizon) and 3-5 rectangular things; noisy colours per segment."""
    yy, xx = np.mgrid[0:height, 0:width]
    horizon = int(height * rng.uniform(0.4, 0.6)) + (8 * np.sin(xx / 50)).astype(int)
    ids = np.where(yy < horizon, 1, 2).astype(np.int64)
    labels = {1: WALL, 2: FLOOR}
    for seg_id in range(3, 3 + int(rng.integers(3, 6))):
        h, w = int(rng.uniform(0.1, 0.35) * height), int(rng.uniform(0.1, 0.35) * width)
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        ids[y : y + h, x : x + w] = seg_id
        labels[seg_id] = int(rng.choice(THING_LABELS))
    colours = rng.integers(0, 256, size=(ids.max() + 1, 3))
    pixels = colours[ids] + rng.normal(0, 12, size=(height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    segments_info = [
        {"id": seg_id, "category_id": labels[seg_id], "iscrowd": 0, "area": stats.area, "bbox": stats.bbox}
        for seg_id, stats in segment_stats(ids).items()
    ]
    return Scene(image, ids, segments_info, f"scene_{index:03d}.png")


Batch = dict[str, Any]
Step = Callable[[int], None]


def ours_batches(scenes: list[Scene], batch_size: int) -> list[Batch]:
    """Our data path, before the timer: targets from the panoptic ids, then `PanopticCollator`."""
    category_to_label = {label: label for label in range(len(CATEGORIES))}
    samples = []
    for i, scene in enumerate(scenes):
        target = panoptic_to_target(scene.ids, scene.segments_info, category_to_label)
        size = torch.tensor(scene.ids.shape, dtype=torch.int64)
        target |= {"image_id": torch.tensor([i]), "orig_size": size, "size": size}
        samples.append((torch.from_numpy(np.array(scene.image)).permute(2, 0, 1).contiguous(), target))
    collate = PanopticCollator()
    return [collate(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]


def tutorial_batches(
    scenes: list[Scene], batch_size: int, masks_dir: Path, size: tuple[int, int]
) -> list[Batch]:
    """The tutorial's data path, before the timer: `DetrImageProcessor(format="coco_panoptic")` per batch."""
    processor = DetrImageProcessor(
        format="coco_panoptic", size={"shortest_edge": min(size), "longest_edge": max(size)}
    )
    for scene in scenes:
        write_panoptic_png(masks_dir / scene.file_name, scene.ids)
    batches = []
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        annotations = [
            {"image_id": i, "file_name": s.file_name, "segments_info": s.segments_info}
            for i, s in enumerate(chunk)
        ]
        batches.append(
            processor(
                images=[s.image for s in chunk],
                annotations=annotations,
                masks_path=masks_dir,
                return_tensors="pt",
            )
        )
    return batches


def make_step(
    model: DetrForSegmentation, batches: list[Batch], trainable: str, loss_fn: Callable[[Batch], torch.Tensor]
) -> Step:
    """`step(i)`: loss of batch i, backward, AdamW. `trainable`: a stage (its `param_groups`) or `all`."""
    model.train()
    if trainable == "all":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        groups = [{"params": list(model.parameters())}]
    else:
        groups = param_groups(model, trainable, lr=1e-4, backbone_lr=1e-5, weight_decay=1e-4)
    optimizer = torch.optim.AdamW(groups, lr=1e-4, weight_decay=1e-4)

    def step(index: int) -> None:
        loss = loss_fn(batches[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def ours_loss(model: DetrForSegmentation, stage: str) -> Callable[[Batch], torch.Tensor]:
    def loss(batch: Batch) -> torch.Tensor:
        return compute_stage_loss(model, stage, batch["pixel_values"], batch["pixel_mask"], batch["labels"])[
            0
        ]

    return loss


def tutorial_detection_loss(model: DetrForSegmentation) -> Callable[[Batch], torch.Tensor]:
    """The box model's own forward with labels (DetrForObjectDetection inside DetrForSegmentation)."""

    def loss(batch: Batch) -> torch.Tensor:
        return model.detr(
            pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"]
        ).loss

    return loss


def tutorial_panoptic_loss(model: DetrForSegmentation) -> Callable[[Batch], torch.Tensor]:
    """The full `DetrForSegmentation(..., labels=...)` forward: box model, mask head on all queries, panoptic loss."""

    def loss(batch: Batch) -> torch.Tensor:
        return model(
            pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"]
        ).loss

    return loss


# row -> (ours: trainable, loss), (tutorial: trainable, loss)
ROWS: dict[str, tuple[tuple[str, Callable], tuple[str, Callable]]] = {
    "detection": (("detection", lambda m: ours_loss(m, "detection")), ("detection", tutorial_detection_loss)),
    "masks": (("masks", lambda m: ours_loss(m, "masks")), ("masks", tutorial_panoptic_loss)),
    "skip-masks": (("detection", lambda m: ours_loss(m, "detection")), ("all", tutorial_panoptic_loss)),
}


def time_interleaved(
    steps_by_path: dict[str, Step], warmup: int, steps: int, num_batches: int
) -> dict[str, float]:
    """Median seconds per step of each path over the timed steps (warm-up steps excluded).

    The paths alternate step by step on the same batch, in alternating order (ABBA...), so that a load
    change on the shared machine, or running second, hits them alike.
    """
    times: dict[str, list[float]] = {path: [] for path in steps_by_path}
    order = list(steps_by_path)
    for i in range(warmup + steps):
        for path in order if i % 2 == 0 else reversed(order):
            start = time.perf_counter()
            steps_by_path[path](i % num_batches)
            if i >= warmup:
                times[path].append(time.perf_counter() - start)
    return {path: statistics.median(values) for path, values in times.items()}


def bench_config(name: str, args: argparse.Namespace, size: tuple[int, int]) -> list[dict]:
    """Time both paths of every row for one model config; one result row per `ROWS` entry."""
    opts = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in DEFAULTS[name].items()}
    batch_size, steps, warmup = opts["batch_size"], opts["steps"], opts["warmup"]
    rng = np.random.default_rng(0)
    num_batches = min(steps + warmup, 4)
    scenes = [make_scene(rng, *size, index=i) for i in range(batch_size * num_batches)]
    torch.manual_seed(0)
    initial = DetrForSegmentation(model_config(name))
    with tempfile.TemporaryDirectory() as tmp:
        data = {
            "ours": ours_batches(scenes, batch_size),
            "tutorial": tutorial_batches(scenes, batch_size, Path(tmp), size),
        }
    rows = []
    for row, paths in ROWS.items():
        steps_by_path = {}
        for path, (trainable, loss_fn) in zip(("ours", "tutorial"), paths, strict=True):
            model = copy.deepcopy(initial)
            steps_by_path[path] = make_step(model, data[path], trainable, loss_fn(model))
        seconds = time_interleaved(steps_by_path, warmup, steps, num_batches)
        del steps_by_path
        speed = {path: batch_size / s for path, s in seconds.items()}
        for path in speed:
            logger.info(
                "%s %-10s %-8s %.3f images/s (%.3f s/step)", name, row, path, speed[path], seconds[path]
            )
        rows.append(
            {"config": name, "row": row, "batch": batch_size, "steps": steps, **speed,
             "ratio": speed["ours"] / speed["tutorial"]}
        )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default="tiny,r50", help="comma-separated: tiny, r50")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per path (default: tiny 6, r50 3)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed warm-up steps (default: tiny 2, r50 1)"
    )
    parser.add_argument(
        "--batch-size", dest="batch_size", type=int, default=None, help="default: tiny 2, r50 1"
    )
    parser.add_argument("--size", default="480x640", help="HEIGHTxWIDTH of the synthetic images")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (set explicitly)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for name in configs:
        model_config(name)  # fail on a typo before any work

    logger.info(
        "torch %s, %d threads, images %dx%d", torch.__version__, torch.get_num_threads(), height, width
    )
    rows = [row for name in configs for row in bench_config(name, args, (height, width))]
    logger.info(
        "train-step speed at %dx%d on CPU (%d threads), images/s, median of the timed steps\n%s",
        height,
        width,
        torch.get_num_threads(),
        format_table(rows),
    )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        f"{'config':<6} {'row':<11} {'batch':>5} {'steps':>5} {'ours':>9} {'tutorial':>9} {'ours/tutorial':>14}"
    ]
    for r in rows:
        lines.append(
            f"{r['config']:<6} {r['row']:<11} {r['batch']:>5} {r['steps']:>5} {r['ours']:>9.3f} "
            f"{r['tutorial']:>9.3f} {r['ratio']:>13.2f}x"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
