"""Train-step throughput of both stages on one GPU in one precision: images/s, peak memory, host-wait share.

Builds the run as `finetune/train.py` does (`finetune.training.run.build_run`: the bundled CVAT sample, DETR's
augmentation, the configured loader) and times `finetune.training.loop.train_one_epoch` itself, so that the
step loop, the data path and the stage losses are all measured. Per stage (`detection`, `masks`):

* `--warmup` untimed steps, then `--steps` timed steps (the loader cycles over the sample's epochs);
* images/s = steps x batch size / wall time, between two `torch.cuda.synchronize()`;
* peak memory: `torch.cuda.max_memory_allocated()` over the timed steps;
* host-wait share: `--profile-steps` further steps under `torch.profiler`; 1 - (GPU kernel time / wall time),
  the share of the wall time the GPU had no kernel to run (it waited on Python, the data loader, a host
  sync or a copy).

The model is facebook/detr-resnet-50-panoptic's architecture with random weights (no Hub access needed;
the speed is that of the weights' shapes), unless `--keep-model` keeps the config's `model` section.

    bench/gpu_check.sh                      # fp32, bf16, fp16 in turn, one process each
    python bench/gpu_check.py --mixed_precision bf16 [--steps 30] [--warmup 5] [--profile-steps 10]
        [--config finetune/configs/default.yaml] [--output_dir DIR] [--json FILE]

Not measured yet: the development machine has no GPU (see docs/benchmarks.md). On a CPU the script runs too
(a smoke test of the script, with `--keep-model --config finetune/configs/ci.yaml`); memory and host-wait
share are then not reported.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from finetune.config import parse_config
from finetune.training.loop import build_optimizer, train_one_epoch
from finetune.training.metrics_log import MetricsLogger
from finetune.training.run import build_run, effective_mixed_precision, setup_accelerator
from finetune.training.speed import apply_speed_settings

logger = logging.getLogger("gpu_check")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "finetune" / "configs" / "default.yaml"
# facebook/detr-resnet-50-panoptic's architecture (DetrConfig's defaults: d_model 256, 6 + 6 layers,
# 100 queries, auxiliary losses) on a timm ResNet-50 without pretrained weights.
R50_RANDOM = ["--model_name_or_path", "null", "--config_overrides", json.dumps(
    {"backbone": "resnet50", "use_timm_backbone": True, "use_pretrained_backbone": False}
)]


def cycle(loader: Iterable, steps: int) -> Iterator:
    """`steps` batches of `loader`, starting new epochs as needed (`set_epoch` keeps the augmentation varied)."""
    def batches() -> Iterator:
        for epoch in itertools.count():
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            yield from loader

    return itertools.islice(batches(), steps)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_busy_share(run_steps, device: torch.device) -> float | None:
    """Share of the wall time of `run_steps()` during which GPU kernels ran (None off CUDA)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        run_steps()
        synchronize(device)
        wall_us = (time.perf_counter() - start) * 1e6
    kernel_us = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA")
    return min(kernel_us / wall_us, 1.0)


def check_stage(parts, config, accelerator, stage: str, args: argparse.Namespace) -> dict:
    """Time `args.steps` optimiser steps of `stage` (after warm-up), then profile `args.profile_steps` more."""
    stage_cfg = config.stage(stage)
    accelerator.free_memory()
    optimizer, _ = build_optimizer(parts.model, stage, stage_cfg, config.trainer.fused_optimizer)
    model, optimizer, loader = accelerator.prepare(parts.model, optimizer, parts.make_train_loader(stage_cfg.batch_size))
    metrics = MetricsLogger(accelerator, Path(args.output_dir) / "metrics.jsonl")
    device = accelerator.device

    def run(steps: int) -> None:
        train_one_epoch(
            model, stage, cycle(loader, steps), optimizer, accelerator, stage_cfg.max_grad_norm, 0, 0, metrics,
            config.logging.logging_steps, check_gradients=config.trainer.check_finite_gradients,
        )

    run(args.warmup)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    run(args.steps)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    busy = gpu_busy_share(lambda: run(args.profile_steps), device) if args.profile_steps else None
    parts.model = accelerator.unwrap_model(model)
    return {
        "stage": stage,
        "mixed_precision": effective_mixed_precision(accelerator),
        "batch_size": stage_cfg.batch_size,
        "steps": args.steps,
        "images_per_s": round(args.steps * stage_cfg.batch_size / seconds, 3),
        "step_s": round(seconds / args.steps, 4),
        "peak_memory_gib": None if peak is None else round(peak, 3),
        "host_wait_share": None if busy is None else round(1.0 - busy, 3),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"], help="the run's precision")
    parser.add_argument("--steps", type=int, default=30, help="timed optimiser steps per stage")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per stage before timing")
    parser.add_argument("--profile-steps", type=int, default=10, help="steps under torch.profiler (0 = none)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="training config (default: default.yaml)")
    parser.add_argument("--keep-model", action="store_true", help="the config's model instead of a random R50")
    parser.add_argument("--output_dir", default=None, help="where the sample is converted (default: a temp dir)")
    parser.add_argument("--json", default=None, help="append the result rows to this JSON-lines file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)

    args.output_dir = args.output_dir or tempfile.mkdtemp(prefix="gpu_check_")
    overrides = [] if args.keep_model else R50_RANDOM
    config = parse_config(
        ["--config", args.config, *overrides, "--output_dir", args.output_dir, "--overwrite_output_dir", "true",
         "--mixed_precision", args.mixed_precision, "--report_to", "none"]
    )
    apply_speed_settings(config.trainer)
    accelerator = setup_accelerator(config)
    parts = build_run(config, accelerator, Path(args.output_dir))
    rows = [check_stage(parts, config, accelerator, stage, args) for stage in config.run.stages]
    for row in rows:
        memory = "n/a" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f} GiB"
        wait = "n/a" if row["host_wait_share"] is None else f"{100 * row['host_wait_share']:.1f}%"
        logger.info(
            f"{row['device']} {row['mixed_precision']:>4} {row['stage']:<9} batch {row['batch_size']}: "
            f"{row['images_per_s']:.2f} images/s ({row['step_s']:.3f} s/step), peak {memory}, GPU waiting on the "
            f"host {wait}"
        )
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


if __name__ == "__main__":
    main()
