"""Panoptic inference speed and peak memory: the project's core against transformers, same model, same work.

The R50 `DetrForSegmentation` architecture of ``facebook/detr-resnet-50-panoptic`` (timm resnet50, 100
queries, 250 classes) with random weights (seeded, no download), on CPU, random images fed at exactly the
given network size (no resizing), one image and batches. Three sides, each in its own process (its peak
RSS is its own), in the same run:

* ``ours``: `finetune.inference.core.predict_images` (``model.detr``, then the mask head on the selected
  queries only),
* ``full``: ``model(...)`` + ``DetrImageProcessor.post_process_panoptic_segmentation`` (the mask head on
  every query),
* ``pipeline``: ``pipeline("image-segmentation")`` over the same model and processor.

All use the same thresholds (``mask_threshold`` 0.5, ``overlap_mask_area_threshold`` 0.8, no fusion) and
a class threshold calibrated per size: with random weights almost no query passes DETR's 0.85, so the
threshold is the ``--keep`` quantile (default 90th percentile) of the query scores on the first image,
and about 10 % of the queries go through our mask head (printed as "kept"). Every side warms up on the
same batch before it is timed. Prints images/s, our speed-up over each side and peak RSS.

    python bench/inference_speed.py [--sizes 480x640,800x1066] [--batch-sizes 1,4] [--repeats 2]
        [--sides ours,full,pipeline] [--threads 2] [--keep 0.9]

Goals (issue 9): >= 3x the pipeline's images/s at 800x1066, >= 2x at 480x640; the peak RSS of one
1286x800 photo (``--sizes 800x1286 --batch-sizes 1``) <= 1/3 of the full forward's. The full forward
of R50 at 800x1066 takes ~15 GB of RAM.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SIDES = ("ours", "full", "pipeline")
MASK_THRESHOLD, OVERLAP_MASK_AREA_THRESHOLD = 0.5, 0.8


def r50_panoptic(seed: int = 0) -> tuple[Any, Any]:
    """``facebook/detr-resnet-50-panoptic``'s architecture, random weights (the same in every process)."""
    import torch
    from transformers import DetrConfig, DetrForSegmentation, DetrImageProcessor

    config = DetrConfig(
        backbone="resnet50", use_timm_backbone=True, use_pretrained_backbone=False, num_labels=250
    )
    torch.manual_seed(seed)
    model = DetrForSegmentation(config).eval()
    processor = DetrImageProcessor(format="coco_panoptic", do_resize=False)  # fed at the network size
    return model, processor


def random_images(height: int, width: int, count: int) -> list[Any]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def calibrate(height: int, width: int, keep: float) -> float:
    """The class threshold that about ``1 - keep`` of the first image's object queries pass."""
    import torch

    model, processor = r50_panoptic()
    inputs = processor(images=random_images(height, width, 1), return_tensors="pt")
    with torch.inference_mode():
        logits = model.detr(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"]).logits
    scores, labels = logits.softmax(-1).max(-1)
    return float(torch.quantile(scores[labels != logits.shape[-1] - 1], keep))


def side_runner(side: str, images: list[Any], threshold: float):
    """A no-argument function doing one batch of `side`'s work, returning how many queries its mask head ran on."""
    import torch

    model, processor = r50_panoptic()
    sizes = [(image.height, image.width) for image in images]
    if side == "ours":
        from finetune.inference.core import PostProcessing, predict_images

        post = PostProcessing(threshold, MASK_THRESHOLD, OVERLAP_MASK_AREA_THRESHOLD)
        return lambda: predict_images(model, processor, images, post).mask_queries
    if side == "full":

        def full() -> int:
            with torch.inference_mode():
                inputs = processor(images=images, return_tensors="pt")
                outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
                processor.post_process_panoptic_segmentation(
                    outputs,
                    threshold=threshold,
                    mask_threshold=MASK_THRESHOLD,
                    overlap_mask_area_threshold=OVERLAP_MASK_AREA_THRESHOLD,
                    label_ids_to_fuse=set(),
                    target_sizes=sizes,
                )
            return outputs.pred_masks.shape[0] * outputs.pred_masks.shape[1]

        return full
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=model, image_processor=processor, device="cpu")

    def run_pipeline() -> int:
        segmenter(
            images,
            subtask="panoptic",
            threshold=threshold,
            mask_threshold=MASK_THRESHOLD,
            overlap_mask_area_threshold=OVERLAP_MASK_AREA_THRESHOLD,
            batch_size=len(images),
        )
        return model.config.num_queries * len(images)

    return run_pipeline


def worker(args: argparse.Namespace) -> None:
    """One side, one size, one batch size: warm-up, timed repeats; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    height, width = args.size
    run = side_runner(args.worker, random_images(height, width, args.batch), args.threshold)
    run()  # warm-up: allocator, oneDNN kernels for these shapes
    start = time.perf_counter()
    for _ in range(args.repeats):
        kept = run()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(
        json.dumps(
            {"images_per_s": args.batch * args.repeats / seconds, "peak_rss_mb": peak_mb, "kept": kept}
        )
    )


def _subprocess(arguments: list[str]) -> str:
    command = [sys.executable, str(Path(__file__).resolve()), *arguments]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def _size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="480x640,800x1066", help="network input sizes HxW, comma-separated"
    )
    parser.add_argument("--batch-sizes", default="1,4", help="images per forward pass, comma-separated")
    parser.add_argument("--repeats", type=int, default=2, help="timed batches per side (after one warm-up)")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"among {', '.join(SIDES)}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every side")
    parser.add_argument("--keep", type=float, default=0.9, help="threshold quantile of the query scores")
    # internal: one side in its own process
    parser.add_argument("--worker", choices=[*SIDES, "calibrate"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=_size, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threshold", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "calibrate":
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps({"threshold": calibrate(*args.size, args.keep)}))
        return 0
    if args.worker:
        worker(args)
        return 0

    sides = [s for s in args.sides.split(",") if s]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        parser.error(f"unknown sides {unknown}")
    common = ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    print(
        f"R50 DetrForSegmentation (random weights), CPU, {args.threads} threads, {args.repeats} timed batches"
    )
    for text in args.sizes.split(","):
        size = _size(text)
        calibration = _subprocess(
            ["--worker", "calibrate", "--size", text, "--keep", str(args.keep), *common]
        )
        threshold = json.loads(calibration)["threshold"]
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            rows = {}
            for side in sides:
                line = _subprocess(
                    [
                        "--worker",
                        side,
                        "--size",
                        text,
                        "--batch",
                        str(batch),
                        "--threshold",
                        str(threshold),
                        *common,
                    ]
                )
                rows[side] = json.loads(line)
            print(f"\n{size[0]}x{size[1]}, batch {batch}, threshold {threshold:.4f}")
            print(
                f"  {'side':<9} {'images/s':>9} {'ours x':>7} {'peak RSS MB':>12} {'mask-head queries':>18}"
            )
            for side, row in rows.items():
                ratio = rows["ours"]["images_per_s"] / row["images_per_s"] if "ours" in rows else float("nan")
                print(
                    f"  {side:<9} {row['images_per_s']:>9.3f} {ratio:>7.2f} {row['peak_rss_mb']:>12.0f} "
                    f"{row['kept']:>18d}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
