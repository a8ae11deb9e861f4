"""Train-step speed of the two stages against the naive tutorial path, measured in the same run.

For each model config (`tiny`: the tests' resnet18 / d_model 64 / 10 queries; `r50`: the architecture of
facebook/detr-resnet-50-panoptic, random init) and each stage, times whole optimizer steps on synthetic
construction-like scenes (two stuff bands, a few rectangular things) at a fixed size:

* ours: samples pre-built by the data path (`finetune.data.targets.panoptic_to_target`, as the DataLoader
  workers do), then in the step `PanopticCollator` + `finetune.modeling.stages.compute_stage_loss` + backward + AdamW.
  Stage detection runs `model.detr` (box losses only); stage masks runs the frozen DETR without grad and
  the mask head on the matched queries only.
* naive: what the tutorials do: in the step, `DetrImageProcessor(format="coco_panoptic")` builds the batch from
  the PIL image + panoptic PNG + segments_info, then the full `DetrForSegmentation(..., labels=...)` forward
  with the full panoptic loss + backward + AdamW. Detection stage: all parameters trainable; masks stage:
  `model.detr` frozen with requires_grad=False (the forward still runs all of it).

Prints images/s per config, stage and path, and the ratio ours / naive.

    python bench/train_speed.py [--configs tiny,r50] [--steps N] [--warmup N] [--batch-size B] [--size 480x640]

Defaults: tiny 2 warm-up + 5 timed steps of 2 images, r50 1 warm-up + 3 timed steps of 1 image (an R50 naive
step took 36-69 s per image on 2 busy CPU cores). Measured: 4.5 min of CPU time; 14 min wall on the 2-core dev
machine while other jobs ran (load average ~8).
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import DetrConfig, DetrForSegmentation, DetrImageProcessor

from dataset_scripts.panoptic_format import segment_stats, write_panoptic_png
from finetune.config import STAGE_NAMES
from finetune.data.collate import PanopticCollator
from finetune.data.targets import panoptic_to_target
from finetune.modeling.loading import TINY_DETR_ARCHITECTURE
from finetune.modeling.stages import compute_stage_loss, param_groups

logger = logging.getLogger("train_speed")

# label = category id (the naive processor copies category_id into class_labels)
CATEGORIES = [("excavator", True), ("pipe", True), ("person", True), ("floor", False), ("wall", False)]
THING_LABELS = [i for i, (_, isthing) in enumerate(CATEGORIES) if isthing]
FLOOR, WALL = 3, 4
DEFAULTS = {
    "tiny": {"steps": 5, "warmup": 2, "batch_size": 2},
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


def ours_step(
    model: DetrForSegmentation, stage: str, scenes: list[Scene], batch_size: int
) -> Callable[[int], None]:
    """Samples pre-built as the DataLoader workers do; the step collates and runs the stage loss."""
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, stage, lr=1e-4, backbone_lr=1e-5, weight_decay=1e-4))
    category_to_label = {label: label for label in range(len(CATEGORIES))}
    samples = []
    for i, scene in enumerate(scenes):
        target = panoptic_to_target(scene.ids, scene.segments_info, category_to_label)
        size = torch.tensor(scene.ids.shape, dtype=torch.int64)
        target |= {"image_id": torch.tensor([i]), "orig_size": size, "size": size}
        samples.append((torch.from_numpy(np.array(scene.image)).permute(2, 0, 1).contiguous(), target))
    collate = PanopticCollator()

    def step(batch_start: int) -> None:
        batch = collate(samples[batch_start : batch_start + batch_size])
        loss, _ = compute_stage_loss(
            model, stage, batch["pixel_values"], batch["pixel_mask"], batch["labels"]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def naive_step(
    model: DetrForSegmentation,
    stage: str,
    scenes: list[Scene],
    batch_size: int,
    masks_dir: Path,
    size: tuple[int, int],
) -> Callable[[int], None]:
    """The tutorial path: the image processor builds each batch, full forward + full loss."""
    model.train()
    for name, parameter in model.named_parameters():  # tutorials: everything trainable, or detr frozen
        parameter.requires_grad_(stage == "detection" or not name.startswith("detr."))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4
    )
    processor = DetrImageProcessor(
        format="coco_panoptic", size={"shortest_edge": min(size), "longest_edge": max(size)}
    )
    for scene in scenes:
        write_panoptic_png(masks_dir / scene.file_name, scene.ids)

    def step(batch_start: int) -> None:
        chunk = scenes[batch_start : batch_start + batch_size]
        annotations = [
            {"image_id": i, "file_name": s.file_name, "segments_info": s.segments_info}
            for i, s in enumerate(chunk)
        ]
        inputs = processor(
            images=[s.image for s in chunk],
            annotations=annotations,
            masks_path=masks_dir,
            return_tensors="pt",
        )
        outputs = model(
            pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"], labels=inputs["labels"]
        )
        optimizer.zero_grad(set_to_none=True)
        outputs.loss.backward()
        optimizer.step()

    return step


def time_interleaved(
    steps_by_path: dict[str, Callable[[int], None]], warmup: int, steps: int, batch_size: int, num_scenes: int
) -> dict[str, float]:
    """Seconds per step of each path, averaged over the timed steps (warm-up steps excluded).

    The paths alternate step by step on the same batches, so that a load change on the shared machine hits
    them alike.
    """
    totals = dict.fromkeys(steps_by_path, 0.0)
    for i in range(warmup + steps):
        batch_start = (i * batch_size) % num_scenes
        for path, step in steps_by_path.items():
            start = time.perf_counter()
            step(batch_start)
            if i >= warmup:
                totals[path] += time.perf_counter() - start
    return {path: total / steps for path, total in totals.items()}


def bench_config(name: str, args: argparse.Namespace, size: tuple[int, int]) -> list[dict]:
    """Time both paths in both stages for one model config; one result row per stage."""
    opts = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in DEFAULTS[name].items()}
    batch_size, steps, warmup = opts["batch_size"], opts["steps"], opts["warmup"]
    rng = np.random.default_rng(0)
    num_scenes = batch_size * (steps + warmup)
    scenes = [make_scene(rng, *size, index=i) for i in range(num_scenes)]
    torch.manual_seed(0)
    initial = DetrForSegmentation(model_config(name))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in STAGE_NAMES:
            steps_by_path = {
                "ours": ours_step(copy.deepcopy(initial), stage, scenes, batch_size),
                "naive": naive_step(copy.deepcopy(initial), stage, scenes, batch_size, Path(tmp), size),
            }
            seconds = time_interleaved(steps_by_path, warmup, steps, batch_size, num_scenes)
            del steps_by_path
            speed = {path: batch_size / s for path, s in seconds.items()}
            for path in speed:
                logger.info(
                    "%s %-9s %-5s %.3f images/s (%.2f s/step)", name, stage, path, speed[path], seconds[path]
                )
            rows.append(
                {"config": name, "stage": stage, "batch": batch_size, "steps": steps, **speed,
                 "ratio": speed["ours"] / speed["naive"]}
            )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default="tiny,r50", help="comma-separated: tiny, r50")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: tiny 5, r50 3)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed warm-up steps (default: tiny 2, r50 1)"
    )
    parser.add_argument(
        "--batch-size", dest="batch_size", type=int, default=None, help="default: tiny 2, r50 1"
    )
    parser.add_argument("--size", default="480x640", help="HEIGHTxWIDTH of the synthetic images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    height, width = (int(v) for v in args.size.lower().split("x"))
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for name in configs:
        model_config(name)  # fail on a typo before any work

    logger.info(
        "torch %s, %d threads, images %dx%d", torch.__version__, torch.get_num_threads(), height, width
    )
    rows = [row for name in configs for row in bench_config(name, args, (height, width))]
    print(f"\ntrain-step speed at {height}x{width} on CPU ({torch.get_num_threads()} threads), images/s")
    print(
        f"{'config':<6} {'stage':<10} {'batch':>5} {'steps':>5} {'ours':>9} {'naive':>9} {'ours/naive':>11}"
    )
    for r in rows:
        print(
            f"{r['config']:<6} {r['stage']:<10} {r['batch']:>5} {r['steps']:>5} {r['ours']:>9.3f} {r['naive']:>9.3f} "
            f"{r['ratio']:>10.2f}x"
        )
    return rows


if __name__ == "__main__":
    main()
