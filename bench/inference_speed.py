"""Panoptic inference speed and peak memory: the project's core against transformers, same model, same segments.

The R50 `DetrForSegmentation` architecture of ``facebook/detr-resnet-50-panoptic`` (timm resnet50, 100
queries, 250 classes) with random weights (seeded, no download), on CPU, random images fed at exactly the
given network size (no resizing). Three sides:

* ``ours``: `finetune.inference.core.predict_images` (``model.detr``, then the mask head on the selected
  queries only),
* ``full``: ``model(...)`` + ``DetrImageProcessor.post_process_panoptic_segmentation`` (the mask head on
  every query),
* ``pipeline``: ``pipeline("image-segmentation")`` over the same model and processor.

Settings at which segments exist. Random weights give every query a class score near 1/251, so DETR's
0.85 would keep no query: the class threshold is the ``--keep`` quantile (default the 90th percentile) of
the batch's object-query scores, so about 10 % of the queries go through our mask head ("kept").
transformers compares *score x mask probability* with ``mask_threshold``, so with scores near 0.008 the
usual 0.5 lets no pixel through: ``mask_threshold`` is 0.5 x the class threshold (a pixel of a query
scored at the threshold passes at mask probability 0.5). A random mask head's logits are nearly flat,
so the best-scored query would win every pixel (one segment per image): its output convolution is
scaled by ``MASK_LOGIT_GAIN`` (same work, sharper masks) and ``overlap_mask_area_threshold`` is 0 (every
query that wins pixels is a segment). Nothing is fused.

Method: ``--rounds`` rounds; in each, every side runs in a fresh process of its own (its peak RSS is its
own), in an order rotated by one side per round (interleaved: a load change hits every side): it builds
the model, warms up on the batch, then times ``--repeats`` batches. Reported per side: the best round's
images/s, the spread of the rounds ((slowest - fastest) / fastest) and the highest peak RSS. Every side
also returns the segments of its last timed batch (label, score and mask of each); they must be the same
on every side and in every round: the segment count is printed, and any difference ends the bench with
exit status 1.

    python bench/inference_speed.py [--sizes 480x640,800x1066] [--batch-sizes 1] [--rounds 3]
        [--repeats 1] [--sides ours,full,pipeline] [--threads 2] [--keep 0.9]

Goals (issue 9): >= 3x the pipeline's images/s at 800x1066, >= 2x at 480x640; the peak RSS of one
1286x800 photo (``--sizes 800x1286 --batch-sizes 1``) <= 1/3 of the full forward's. The full forward
of R50 at 800x1066 takes ~13 GB of RAM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SIDES = ("ours", "full", "pipeline")
# See the module docstring: segments of a random-weight model at the calibrated class threshold.
MASK_THRESHOLD_PER_CLASS_THRESHOLD = 0.5
OVERLAP_MASK_AREA_THRESHOLD = 0.0
MASK_LOGIT_GAIN = 10.0
# The exact check: the trained tiny checkpoint (distinct queries) on two bundled photos, its own thresholds.
CHECKPOINT = REPO_ROOT / "pretrained" / "tiny-detr-panoptic"
CHECK_PHOTOS = (
    "sample_data/cvat_task_machines/images/machines_000.jpg",
    "sample_data/cvat_task_materials/images/materials_000.jpg",
)
CHECK_SETTINGS = ("threshold", "mask_threshold", "overlap_mask_area_threshold")
SCORE_TOLERANCE = 1e-4  # transformers rounds segment scores to 6 decimals; the paths differ in float noise only


def r50_panoptic(seed: int = 0) -> tuple[Any, Any]:
    """``facebook/detr-resnet-50-panoptic``'s architecture, random weights (the same in every process),
    the mask head's output convolution scaled by `MASK_LOGIT_GAIN`."""
    import torch
    from transformers import DetrConfig, DetrForSegmentation, DetrImageProcessor

    config = DetrConfig(
        backbone="resnet50", use_timm_backbone=True, use_pretrained_backbone=False, num_labels=250
    )
    torch.manual_seed(seed)
    model = DetrForSegmentation(config).eval()
    with torch.no_grad():
        model.mask_head.output_conv.weight.mul_(MASK_LOGIT_GAIN)
        model.mask_head.output_conv.bias.mul_(MASK_LOGIT_GAIN)
    processor = DetrImageProcessor(format="coco_panoptic", do_resize=False)  # fed at the network size
    return model, processor


def random_images(height: int, width: int, count: int) -> list[Any]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def calibrate(height: int, width: int, batch: int, keep: float) -> float:
    """The class threshold that about ``1 - keep`` of the batch's object queries pass."""
    import torch

    model, processor = r50_panoptic()
    inputs = processor(images=random_images(height, width, batch), return_tensors="pt")
    with torch.inference_mode():
        logits = model.detr(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"]).logits
    scores, labels = logits.softmax(-1).max(-1)
    return float(torch.quantile(scores[labels != logits.shape[-1] - 1], keep))


def segment_record(label_id: int, score: float, mask: Any) -> list[Any]:
    """One segment as [label id, score, mask area, SHA-1 of the packed mask]: comparable across processes."""
    import numpy as np

    mask = np.asarray(mask, dtype=bool)
    digest = hashlib.sha1(np.packbits(mask).tobytes() + repr(mask.shape).encode()).hexdigest()
    return [int(label_id), float(score), int(mask.sum()), digest]


def side_runner(side: str, model: Any, processor: Any, images: list[Any], settings: dict[str, float]):
    """A no-argument function doing one batch of `side`'s work; it returns (how many queries its mask head
    ran on, per image the sorted `segment_record`s).

    Args:
        side: ``ours``, ``full`` or ``pipeline``.
        model: A `DetrForSegmentation` in eval mode.
        processor: Its `DetrImageProcessor`.
        images: The batch (RGB PIL images).
        settings: ``threshold``, ``mask_threshold`` and ``overlap_mask_area_threshold``; nothing is fused.
    """
    import numpy as np
    import torch

    sizes = [(image.height, image.width) for image in images]
    if side == "ours":
        from finetune.inference.core import PostProcessing, predict_images

        post = PostProcessing(**settings)

        def ours() -> tuple[int, list[list[list[Any]]]]:
            out = predict_images(model, processor, images, post)
            segments = [
                sorted(segment_record(s["label_id"], s["score"], p.ids == s["id"]) for s in p.segments)
                for p in out.predictions
            ]
            return out.mask_queries, segments

        return ours
    if side == "full":

        def full() -> tuple[int, list[list[list[Any]]]]:
            with torch.inference_mode():
                inputs = processor(images=images, return_tensors="pt")
                outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
                results = processor.post_process_panoptic_segmentation(
                    outputs, **settings, label_ids_to_fuse=set(), target_sizes=sizes
                )
            segments = [
                sorted(
                    segment_record(s["label_id"], s["score"], (r["segmentation"] == s["id"]).numpy())
                    for s in r["segments_info"]
                )
                for r in results
            ]
            return outputs.pred_masks.shape[0] * outputs.pred_masks.shape[1], segments

        return full
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=model, image_processor=processor, device="cpu")
    label_ids = {name: int(i) for i, name in model.config.id2label.items()}

    def run_pipeline() -> tuple[int, list[list[list[Any]]]]:
        results = segmenter(images, subtask="panoptic", **settings, batch_size=len(images))
        segments = [
            sorted(segment_record(label_ids[s["label"]], s["score"], np.asarray(s["mask"]) > 0) for s in r)
            for r in results
        ]
        return model.config.num_queries * len(images), segments

    return run_pipeline


def r50_settings(threshold: float) -> dict[str, float]:
    """The timed R50's post-processing settings at a calibrated class threshold (module docstring)."""
    return {
        "threshold": threshold,
        "mask_threshold": MASK_THRESHOLD_PER_CLASS_THRESHOLD * threshold,
        "overlap_mask_area_threshold": OVERLAP_MASK_AREA_THRESHOLD,
    }


def checkpoint_segments(side: str) -> list[list[list[Any]]]:
    """`side`'s segments of the trained tiny checkpoint on `CHECK_PHOTOS`, at its own thresholds."""
    from PIL import Image
    from transformers import DetrForSegmentation, DetrImageProcessor

    model = DetrForSegmentation.from_pretrained(CHECKPOINT).eval()
    processor = DetrImageProcessor.from_pretrained(CHECKPOINT)
    settings = {name: float(model.config.panoptic_postprocess[name]) for name in CHECK_SETTINGS}
    images = [Image.open(REPO_ROOT / photo).convert("RGB") for photo in CHECK_PHOTOS]
    return side_runner(side, model, processor, images, settings)()[1]


def worker(args: argparse.Namespace) -> None:
    """One side, one size, one batch size, one round: warm-up, timed repeats; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    height, width = args.size
    model, processor = r50_panoptic()
    images = random_images(height, width, args.batch)
    run = side_runner(args.worker, model, processor, images, r50_settings(args.threshold))
    run()  # warm-up: allocator, oneDNN kernels for these shapes
    start = time.perf_counter()
    for _ in range(args.repeats):
        kept, segments = run()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(
        json.dumps(
            {
                "images_per_s": args.batch * args.repeats / seconds,
                "peak_rss_mb": peak_mb,
                "kept": kept,
                "segments": segments,
                "checkpoint_segments": checkpoint_segments(args.worker),  # after the timing and peak RSS
            }
        )
    )


def segment_mismatches(runs: list[tuple[str, int, list[list[list[Any]]]]], masks: bool = True) -> list[str]:
    """Where the segments of a (side, round) differ from the first run's: count, label, score (within
    `SCORE_TOLERANCE`) and, with `masks`, every pixel of every mask."""

    def key(record: list[Any]) -> tuple[Any, ...]:
        return (record[0], *record[2:]) if masks else (record[0],)

    first_side, first_round, reference = runs[0]
    problems = []
    for side, round_index, segments in runs[1:]:
        for image, (ref, got) in enumerate(zip(reference, segments, strict=True)):
            ref, got = sorted(ref, key=key), sorted(got, key=key)
            same = len(ref) == len(got) and all(
                key(a) == key(b) and abs(a[1] - b[1]) <= SCORE_TOLERANCE for a, b in zip(ref, got, strict=True)
            )
            if not same:
                problems.append(
                    f"{side} (round {round_index + 1}) image {image}: {len(got)} segments "
                    f"[label, score, area, mask sha1] {got} != {first_side} (round {first_round + 1}): "
                    f"{len(ref)} segments {ref}"
                )
    return problems


def same_masks(runs: list[tuple[str, int, list[list[list[Any]]]]]) -> tuple[int, int]:
    """How many of the first run's segments have a pixel-identical mask in every other run, of how many."""
    first = [{record[3] for record in image} for image in runs[0][2]]
    common = [set(image) for image in first]
    for _, _, segments in runs[1:]:
        common = [c & {record[3] for record in image} for c, image in zip(common, segments, strict=True)]
    return sum(map(len, common)), sum(map(len, first))


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
    parser.add_argument("--batch-sizes", default="1", help="images per forward pass, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (a fresh process per side each)")
    parser.add_argument("--repeats", type=int, default=1, help="timed batches per side and round (after one warm-up)")
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
        print(json.dumps({"threshold": calibrate(*args.size, args.batch, args.keep)}))
        return 0
    if args.worker:
        worker(args)
        return 0

    sides = [s for s in args.sides.split(",") if s]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown or not sides or args.rounds < 1 or args.repeats < 1:
        parser.error(f"unknown sides {unknown}" if unknown else "need some --sides, --rounds >= 1, --repeats >= 1")
    common = ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    print(
        f"R50 DetrForSegmentation (random weights, mask logits x{MASK_LOGIT_GAIN:g}), CPU, {args.threads} threads; "
        f"method: {args.rounds} interleaved rounds (side order rotated each round), each side in a fresh "
        f"process per round: one warm-up batch, then {args.repeats} timed batch(es); best round's images/s, "
        "spread (slowest - fastest) / fastest, highest peak RSS; segments compared across sides and rounds"
    )
    failed = False
    for text in args.sizes.split(","):
        size = _size(text)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            calibration = _subprocess(
                ["--worker", "calibrate", "--size", text, "--batch", str(batch), "--keep", str(args.keep), *common]
            )
            threshold = json.loads(calibration)["threshold"]
            rows: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
            runs = []
            for round_index in range(args.rounds):
                shift = round_index % len(sides)
                for side in sides[shift:] + sides[:shift]:
                    line = _subprocess(
                        ["--worker", side, "--size", text, "--batch", str(batch), "--threshold", str(threshold), *common]
                    )
                    row = json.loads(line)
                    rows[side].append(row)
                    runs.append((side, round_index, row["segments"]))
            counts = [len(image) for image in runs[0][2]]
            r50_problems = segment_mismatches(runs, masks=False)
            identical, total = same_masks(runs)
            check_runs = [(side, r, row["checkpoint_segments"]) for side in sides for r, row in enumerate(rows[side])]
            check_counts = [len(image) for image in check_runs[0][2]]
            mismatches = segment_mismatches(check_runs)
            print(
                f"\n{size[0]}x{size[1]}, batch {batch}, class threshold {threshold:.4f}, mask threshold "
                f"{MASK_THRESHOLD_PER_CLASS_THRESHOLD * threshold:.4f}: R50 segments per image {counts}, "
                + ("counts, labels and scores equal" if not r50_problems else f"{len(r50_problems)} count/label differences")
                + f" on every side and round, {identical} of {total} masks pixel-identical (random queries are"
                " near-duplicates: their masks tie)"
            )
            print(
                f"  exact check, {CHECKPOINT.name} on {len(CHECK_PHOTOS)} bundled photos: segments per image "
                f"{check_counts}, "
                + ("SAME labels, scores and masks on every side and round" if not mismatches else f"{len(mismatches)} MISMATCHES")
            )
            for problem in r50_problems:
                print(f"  R50 difference: {problem}", file=sys.stderr)
            print(
                f"  {'side':<9} {'images/s':>9} {'spread':>7} {'ours x':>7} {'peak RSS MB':>12} {'mask-head queries':>18}"
            )
            best = {side: max(r["images_per_s"] for r in side_rows) for side, side_rows in rows.items()}
            for side, side_rows in rows.items():
                speeds = [r["images_per_s"] for r in side_rows]
                spread = max(speeds) / min(speeds) - 1  # = (slowest time - fastest time) / fastest time
                ratio = best["ours"] / best[side] if "ours" in best else float("nan")
                peak = max(r["peak_rss_mb"] for r in side_rows)
                print(
                    f"  {side:<9} {best[side]:>9.3f} {spread:>6.0%} {ratio:>7.2f} {peak:>12.0f} "
                    f"{side_rows[-1]['kept']:>18d}   (rounds: {', '.join(f'{v:.3f}' for v in speeds)}; "
                    f"median {statistics.median(speeds):.3f})"
                )
            for problem in mismatches:
                print(f"  MISMATCH: {problem}", file=sys.stderr)
            failed = failed or bool(mismatches)
    if failed:
        print("inference_speed: the sides' segments differ (see MISMATCH above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
