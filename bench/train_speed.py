"""Train-step speed of the two stages: each row times two paths in the same run (what they compare: below).

For each model config (`tiny`: `finetune.modeling.TINY_DETR_ARCHITECTURE`, the tests' model; `r50`: the
architecture of facebook/detr-resnet-50-panoptic, random init) it times whole optimizer steps (forward, loss,
backward, AdamW) on synthetic construction-like scenes (two stuff bands, a few rectangular things) at a fixed
size. Batches are built BEFORE the timer on both sides, as DataLoader workers would: ours with
`finetune.data.targets.panoptic_to_target` + `PanopticCollator`, the tutorial's with
`DetrImageProcessor(format="coco_panoptic")` from the PIL image + panoptic PNG + segments_info.

Rows (each a ratio of two paths timed in the same run, steps interleaved); the first column says what the
two sides compare and whether they do the same work:

* `detection` (same work): the same parameters train on both sides (`finetune.modeling.stages.param_groups`:
  `model.detr` without the ResNet stem and layer1; mask head frozen) with the same box-only loss. Ours:
  `compute_stage_loss(model, "detection", ...)`; tutorial: `model.detr(pixel_values, pixel_mask, labels)`.
  The ratio is ~1 by design; it shows that our path adds no overhead.
* `masks-vs-before` (same work, same gradients, checked in the run): stage `masks` as it is against stage
  `masks` as it was before the frozen DETR stopped computing its box loss. "Before" is the same code with the
  frozen DETR's forward given the labels again (transformers then runs its box losses, with one Hungarian
  matching per decoder layer and image, and the result is a constant of the loss). The gradients of the
  trainable parameters on the first batch are compared and must agree (else the bench fails).
* `masks-vs-tutorial` (LESS work on our side, by design): the same trainable parameters (mask head +
  `bbox_attention`). Ours: the frozen DETR under `no_grad` in eval mode, one matching per image, the mask
  head on the matched queries only, the mask losses only. Tutorial: the full
  `DetrForSegmentation(..., labels=...)` forward, `model.detr` frozen (requires_grad False, so it builds no
  autograd graph either) and, like ours, in eval mode (dropout off: dropout is not work worth comparing);
  the mask head on all `num_queries` queries and the full panoptic loss. The gain is the skipped work.
* `skip-masks` (LESS work on our side, by design): what stage 1 saves by not running the mask head at all.
  Ours: the detection step above; tutorial: the full panoptic step training everything, mask head included
  (what a one-stage fine-tuning does).
* `collate-bool` (same tensors, another dtype): `PanopticCollator` with bool target masks (the default)
  against float32 masks, each batch then pickled and unpickled as a DataLoader worker's queue does.
  Timed per batch of the run; it shows the data path's saving (4x fewer bytes), not a model step.

The step loop's host syncs (one per logging interval instead of several per step) cost nothing on a CPU,
so this bench has no row for them: `tests/test_train_step_loop.py` counts them, and `bench/gpu_check.sh`
measures the GPU's waiting time.

    python bench/train_speed.py [--configs tiny,r50] [--steps N] [--warmup N] [--batch-size B] [--size 480x640]
        [--threads T]

Defaults: tiny 2 warm-up + 6 timed steps of 2 images, r50 1 warm-up + 3 timed steps of 1 image; 1 thread.
The per-step times reported are medians over the timed steps; the paths alternate step by step, in
alternating order (ABBA), so that a load change on the shared machine hits them alike.

Figures: docs/benchmarks.md (the command, the machine's load and each ratio).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import pickle
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


def ours_samples(scenes: list[Scene]) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Our dataset's items: the image (3, H, W) uint8 and its target from the panoptic ids."""
    category_to_label = {label: label for label in range(len(CATEGORIES))}
    samples = []
    for i, scene in enumerate(scenes):
        target = panoptic_to_target(scene.ids, scene.segments_info, category_to_label)
        size = torch.tensor(scene.ids.shape, dtype=torch.int64)
        target |= {"image_id": torch.tensor([i]), "orig_size": size, "size": size}
        samples.append((torch.from_numpy(np.array(scene.image)).permute(2, 0, 1).contiguous(), target))
    return samples


def ours_batches(scenes: list[Scene], batch_size: int) -> list[Batch]:
    """Our data path, before the timer: targets from the panoptic ids, then `PanopticCollator`."""
    samples = ours_samples(scenes)
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
    model: DetrForSegmentation,
    batches: list[Batch],
    trainable: str,
    loss_fn: Callable[[Batch], torch.Tensor],
    frozen_detr_eval: bool = False,
) -> Step:
    """`step(i)`: loss of batch i, backward, AdamW. `trainable`: a stage (its `param_groups`) or `all`.

    `frozen_detr_eval` puts `model.detr` in eval mode (dropout off), as stage `masks` of ours runs it.
    """
    model.train()
    if frozen_detr_eval:
        model.detr.eval()
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


def ours_masks_before_loss(model: DetrForSegmentation) -> Callable[[Batch], torch.Tensor]:
    """Stage `masks` as it was before the frozen DETR stopped computing its box loss.

    The same code as `ours_loss(model, "masks")`, with the frozen DETR's forward given the labels: transformers
    then computes the class/L1/GIoU losses of the final and every auxiliary decoder layer (a Hungarian matching
    each) under `no_grad`, which the old stage added to its loss as a constant. Fails if the stage no longer
    calls `model.detr`'s forward (then this emulation would silently measure nothing).
    """
    detr = model.detr
    calls = []

    def loss(batch: Batch) -> torch.Tensor:
        def forward_with_labels(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return type(detr).forward(detr, *args, **{**kwargs, "labels": batch["labels"]})

        detr.forward = forward_with_labels
        try:
            value = ours_loss(model, "masks")(batch)
        finally:
            del detr.forward
        if not calls:
            raise RuntimeError("stage masks no longer calls model.detr(...): the 'before' emulation is void")
        return value  # the old stage added the box loss, a constant: no cost, no gradient

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


@dataclass(frozen=True)
class Side:
    """One side of a row: which data path, which parameters train, which loss, frozen DETR in eval mode."""

    data: str  # "ours" or "tutorial": whose batches
    trainable: str
    loss: Callable[[DetrForSegmentation], Callable[[Batch], torch.Tensor]]
    frozen_detr_eval: bool = False


# row -> (what the ratio compares, first side, second side); ratio = first side's speed / second's
ROWS: dict[str, tuple[str, dict[str, Side]]] = {
    "detection": (
        "same work",
        {
            "ours": Side("ours", "detection", lambda m: ours_loss(m, "detection")),
            "tutorial": Side("tutorial", "detection", tutorial_detection_loss),
        },
    ),
    "masks-vs-before": (
        "same work, same gradients",
        {
            "ours": Side("ours", "masks", lambda m: ours_loss(m, "masks")),
            "before": Side("ours", "masks", ours_masks_before_loss),
        },
    ),
    "masks-vs-tutorial": (
        "less work by design",
        {
            "ours": Side("ours", "masks", lambda m: ours_loss(m, "masks")),
            "tutorial": Side("tutorial", "masks", tutorial_panoptic_loss, frozen_detr_eval=True),
        },
    ),
    "skip-masks": (
        "less work by design",
        {
            "ours": Side("ours", "detection", lambda m: ours_loss(m, "detection")),
            "tutorial": Side("tutorial", "all", tutorial_panoptic_loss),
        },
    ),
}


def check_same_gradients(initial: DetrForSegmentation, sides: dict[str, Side], batch: Batch) -> float:
    """Largest relative difference of the trainable gradients of two sides on `batch`; raises above 1e-4."""
    grads = []
    for side in sides.values():
        model = copy.deepcopy(initial)
        param_groups(model, side.trainable, lr=1e-4, backbone_lr=1e-5, weight_decay=1e-4)
        model.train()
        side.loss(model)(batch).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    first, second = grads
    if first.keys() != second.keys() or not first:
        raise RuntimeError(
            f"the two sides train different parameters: {sorted(first.keys() ^ second.keys())}"
        )
    worst = max(
        float((first[n] - second[n]).abs().max() / first[n].abs().max().clamp_min(1e-12)) for n in first
    )
    if worst > 1e-4:
        raise RuntimeError(f"the two sides' gradients differ (largest relative difference {worst:.2e})")
    return worst


def time_collate(scenes: list[Scene], batch_size: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per batch of `PanopticCollator` + a worker queue's pickling, bool vs float32 target masks.

    Both sides collate the same samples; the order alternates every repeat (ABBA).
    """
    samples = ours_samples(scenes)
    collators = {"bool": PanopticCollator(), "float32": PanopticCollator(mask_dtype=torch.float32)}
    times: dict[str, list[float]] = {name: [] for name in collators}
    for repeat in range(repeats + 1):  # the first round warms up
        names = list(collators) if repeat % 2 == 0 else list(reversed(collators))
        for name in names:
            start = time.perf_counter()
            for i in range(0, len(samples), batch_size):
                batch = collators[name](samples[i : i + batch_size])
                pickle.loads(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
            if repeat:
                times[name].append((time.perf_counter() - start) / math.ceil(len(samples) / batch_size))
    return times


def time_interleaved(
    steps_by_path: dict[str, Step], warmup: int, steps: int, num_batches: int
) -> dict[str, list[float]]:
    """Seconds of each timed step of each path (warm-up steps excluded).

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
    return times


def result_row(config: str, row: str, compares: str, batch_size: int, times: dict[str, list[float]]) -> dict:
    """Median images/s of each side (and the min/max seconds per step), ratio first side / second side."""
    (first, first_times), (second, second_times) = times.items()
    for side, values in times.items():
        logger.info(
            "%s %-17s %-8s median %.3f s/step (min %.3f, max %.3f, %d steps)",
            config, row, side, statistics.median(values), min(values), max(values), len(values),
        )  # fmt: skip
    median = {side: statistics.median(values) for side, values in times.items()}
    return {
        "config": config, "row": row, "compares": compares, "batch": batch_size, "steps": len(first_times),
        "sides": f"{first}/{second}", "first_s": median[first], "second_s": median[second],
        "spread": f"{min(first_times):.3f}-{max(first_times):.3f} / {min(second_times):.3f}-{max(second_times):.3f}",
        "ratio": median[second] / median[first],
    }  # fmt: skip


def bench_config(name: str, args: argparse.Namespace, size: tuple[int, int], rows: list[str]) -> list[dict]:
    """Time both sides of every selected row for one model config; one result row per row."""
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
    results = []
    for row in rows:
        if row == "collate-bool":
            times = time_collate(scenes, batch_size, repeats=max(steps, 3))
            results.append(result_row(name, row, "same tensors, bool vs float32 masks", batch_size, times))
            continue
        compares, sides = ROWS[row]
        if compares.startswith("same work, same gradients"):
            worst = check_same_gradients(initial, sides, data["ours"][0])
            logger.info("%s %s: same gradients (largest relative difference %.1e)", name, row, worst)
        steps_by_path = {}
        for side_name, side in sides.items():
            model = copy.deepcopy(initial)
            steps_by_path[side_name] = make_step(
                model, data[side.data], side.trainable, side.loss(model), side.frozen_detr_eval
            )
        times = time_interleaved(steps_by_path, warmup, steps, num_batches)
        del steps_by_path
        results.append(result_row(name, row, compares, batch_size, times))
    return results


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
    parser.add_argument(
        "--rows",
        default=",".join([*ROWS, "collate-bool"]),
        help=f"comma-separated: {', '.join([*ROWS, 'collate-bool'])}",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for name in configs:
        model_config(name)  # fail on a typo before any work
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS and r != "collate-bool"]
    if unknown:
        parser.error(f"unknown rows {unknown}: expected {', '.join([*ROWS, 'collate-bool'])}")

    logger.info(
        "torch %s, %d threads, images %dx%d", torch.__version__, torch.get_num_threads(), height, width
    )
    results = [result for name in configs for result in bench_config(name, args, (height, width), rows)]
    logger.info(
        "train-step speed at %dx%d on CPU (%d threads); method: warm-up steps, then the two sides of a row "
        "alternate step by step (ABBA) on the same batches; seconds per step are medians with the min-max "
        "spread; speed-up = second side's median / first side's\n%s",
        height,
        width,
        torch.get_num_threads(),
        format_table(results),
    )
    return results


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'config':<6} {'row':<18} {'compares':<36} {'batch':>5} {'steps':>5} {'sides':<16} "
        f"{'s/step (median)':>17} {'spread (min-max s)':<28} {'speed-up':>8}"
    )
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['config']:<6} {r['row']:<18} {r['compares']:<36} {r['batch']:>5} {r['steps']:>5} {r['sides']:<16} "
            f"{r['first_s']:>8.3f}/{r['second_s']:<8.3f} {r['spread']:<28} {r['ratio']:>7.2f}x"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
