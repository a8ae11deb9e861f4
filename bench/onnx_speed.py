"""Inference speed of the ONNX export: the PyTorch inference core vs ONNX Runtime fp32 vs int8.

Same images, same thresholds, same inference core (`finetune.inference.core.predict_batch`: body, query
selection, mask head on the selected queries, transformers' post-processing); only the backend differs.
Each side runs in its own worker process (its peak RSS is its own) that loads its model once and warms up
on the images; the parent then interleaves timed rounds (pytorch, fp32, int8, pytorch, ...), each round
predicting every image once, one image per call, and reports the best round (images/s) with the spread
(worst/best - 1). The predictions of the last round are compared in the same run: PyTorch vs fp32 must
have the same segments on every image, >= 99.9 % equal pixels and scores within 1e-4 (the run fails
otherwise); int8 vs fp32 is reported as PQ (`finetune.export.compare`).

Configs:

* ``tiny``: the shipped `pretrained/tiny-detr-panoptic` on the sample photos, at its own sizes and thresholds;
* ``r50``: ``facebook/detr-resnet-50-panoptic``'s architecture (timm resnet50, 100 queries, 250 classes)
  with random weights (seeded, no download), random images fed at exactly ``--size`` (no resizing). With
  random weights almost no query passes a real threshold, so the class threshold is calibrated so that
  the image keeping most queries keeps ``--keep`` of the 100 (default 10; the others keep fewer), and the mask threshold is half of it
  (transformers compares score-weighted mask probabilities with it): segments exist, and are counted.
  Each side calibrates its own threshold on its own scores (fp32's equals PyTorch's to ~1e-6; int8's
  scores are perturbed and, with PyTorch's threshold, let far more queries through), so every side runs
  the mask head on at most ``--keep`` queries per image: the same work. The thresholds and kept counts are
  in the output (``settings``). On random weights, int8's PQ against fp32 says little; the accuracy
  figure is `bench/onnx_accuracy.py`'s on a trained model.
  The query embeddings are drawn N(0, 1) and ``bbox_attention``'s query projection scaled x10, so that
  queries and masks are distinct as in a trained model (with DETR's init they are equal to the last bits).

The exports are written once into ``--work-dir`` (``detr-panoptic-export``'s code, validation included)
and reused; their file sizes are printed.

    python bench/onnx_speed.py [--configs tiny,r50] [--size 800x1066] [--images 2] [--repeats 3]
        [--threads 2] [--keep 10] [--work-dir /tmp/onnx-bench]

Goals (issue 21), r50 at 800x1066 on 2 threads: fp32 >= 1.5x the PyTorch core's images/s, int8 >= 2.5x;
the fp32 files <= 180 MB.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SIDES = ("pytorch", "fp32", "int8")
R50_LABELS = 250


def _r50_checkpoint(folder: Path) -> Path:
    """A random-weight R50 panoptic checkpoint folder (config, weights, image processor fed at network size)."""
    import torch
    from transformers import DetrConfig, DetrForSegmentation, DetrImageProcessor

    if (folder / "config.json").is_file():
        return folder
    config = DetrConfig(
        backbone="resnet50", use_timm_backbone=True, use_pretrained_backbone=False, num_labels=R50_LABELS
    )
    config.stuff_label_ids = []
    torch.manual_seed(0)
    model = DetrForSegmentation(config).eval()
    with torch.no_grad():
        # DETR's init gives the 100 query embeddings nearly equal values (std ~0.02 against N(0, 1) in the
        # trained checkpoint): all queries then score alike to the last bits, a threshold keeps 0 or 100 of
        # them, and their masks tie at most pixels. Trained-like spreads make queries (and masks) distinct.
        model.detr.model.query_position_embeddings.weight.normal_(0.0, 1.0)
        model.bbox_attention.q_proj.weight.mul_(10.0)
    model.save_pretrained(folder)
    DetrImageProcessor(format="coco_panoptic", do_resize=False).save_pretrained(folder)
    return folder


def prepare(config: str, work_dir: Path) -> dict[str, str]:
    """The checkpoint and its two exports (written once, reused)."""
    from finetune.export.exporter import export_model

    checkpoint = REPO_ROOT / "pretrained/tiny-detr-panoptic" if config == "tiny" else _r50_checkpoint(work_dir / "r50")
    folders = {"pytorch": str(checkpoint)}
    for side, quantize in (("fp32", "none"), ("int8", "int8")):
        export = work_dir / f"{config}-{side}"
        if not (export / "export.json").is_file():
            export_model(str(checkpoint), export, quantize=quantize, overwrite=True)
        folders[side] = str(export)
    return folders


def _images(config: str, size: tuple[int, int], count: int) -> list[Any]:
    import numpy as np
    from PIL import Image

    if config == "tiny":
        photos = sorted((REPO_ROOT / "sample_data").rglob("*.jpg"))[:count]
        return [Image.open(p).convert("RGB") for p in photos]
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)) for _ in range(count)]


def worker(args: argparse.Namespace) -> None:
    """One side: load, then answer the parent's commands on stdin (one JSON line each) on stdout."""
    import torch

    from finetune.inference import PanopticPredictor
    from finetune.inference.core import predict_batch, selected_queries

    torch.set_num_threads(args.threads)
    predictor = PanopticPredictor.from_pretrained(args.folder, device="cpu", batch_size=1)
    images = _images(args.config, tuple(args.size), args.images)
    out = sys.stdout
    for line in sys.stdin:
        command = json.loads(line)
        if command["do"] == "calibrate":  # the class threshold under which no image keeps more than `keep`
            keep = command["keep"]
            thresholds, logits = [], []
            for image in images:
                inputs = predictor.image_processor(images=[image], return_tensors="pt")
                with torch.inference_mode():
                    detection = predict_batch(
                        predictor.model, predictor.image_processor, inputs["pixel_values"], inputs["pixel_mask"],
                        [image.size[::-1]], predictor.postprocessing, masks=False,
                    )  # fmt: skip
                logits.append(detection.logits[0])
                scores = logits[-1].softmax(-1)[:, :-1].max(-1).values.sort(descending=True).values
                thresholds.append(float(scores[keep - 1] + scores[keep]) / 2)
            threshold = max(thresholds)
            kept = [int(selected_queries(image_logits[None], threshold).sum()) for image_logits in logits]
            out.write(json.dumps({"threshold": threshold, "kept": kept}) + "\n")
        elif command["do"] == "settings":
            predictor.postprocessing = predictor.postprocessing.__class__(
                threshold=command["threshold"],
                mask_threshold=command["mask_threshold"],
                overlap_mask_area_threshold=predictor.overlap_mask_area_threshold,
                label_ids_to_fuse=predictor.postprocessing.label_ids_to_fuse,
            )
            predictor.predict(images)  # warm-up
            out.write(json.dumps({"ok": True}) + "\n")
        elif command["do"] == "round":
            start = time.perf_counter()
            predictions = predictor.predict(images)
            seconds = time.perf_counter() - start
            with open(command["dump"], "wb") as handle:
                pickle.dump(predictions, handle)
            out.write(json.dumps({"seconds": seconds}) + "\n")
        elif command["do"] == "quit":
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            out.write(json.dumps({"peak_rss_mb": peak_kb / 1024}) + "\n")
            out.flush()
            return
        out.flush()


class Side:
    """A worker process and the line protocol to it."""

    def __init__(self, name: str, folder: str, config: str, args: argparse.Namespace) -> None:
        self.name = name
        command = [
            sys.executable, __file__, "--worker", "--folder", folder, "--configs", config,
            "--threads", str(args.threads), "--images", str(args.images), "--size", args.size_text,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        self.seconds: list[float] = []

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker died (exit {self.process.wait()})")
        return json.loads(line)


def _sizes_mb(folder: str) -> float:
    return sum(p.stat().st_size for p in Path(folder).glob("*.onnx")) / 1e6


def run_config(config: str, args: argparse.Namespace) -> dict[str, Any]:
    from finetune.export.compare import compare_predictions

    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    # In a child process: a worker forked from a parent that loaded a model would inherit its peak RSS
    # (Linux keeps ru_maxrss across exec), so the parent stays light until the workers are done.
    preparation = subprocess.run(
        [sys.executable, __file__, "--prepare", "--configs", config, "--work-dir", str(work_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        check=True,
    )
    folders = json.loads(preparation.stdout.strip().splitlines()[-1])
    names = [name for name in SIDES if name in args.sides]
    sides = {name: Side(name, folders[name], config, args) for name in names}
    try:
        settings: dict[str, Any] = {}
        if config == "r50":
            # Each side calibrates its own threshold on its own scores: with random weights the scores sit near
            # the threshold, and int8's perturbed scores let many more queries through the mask head with
            # PyTorch's threshold (11 GB RSS and a mask-head-bound timing). Calibrated per side, every side
            # keeps at most --keep queries per image, so the sides do the same work.
            for name, side in sides.items():
                calibration = side.ask(do="calibrate", keep=args.keep)
                if max(calibration["kept"]) != args.keep:
                    raise RuntimeError(f"{name}: the calibrated threshold keeps {calibration['kept']}, not {args.keep}")
                print(f"r50 {name}: threshold {calibration['threshold']:.4g} keeps {calibration['kept']} queries",
                      file=sys.stderr)
                settings[name] = {"threshold": calibration["threshold"], "mask_threshold": calibration["threshold"] / 2}
                settings[name]["kept"] = calibration["kept"]
        else:
            post = json.loads((Path(folders["pytorch"]) / "config.json").read_text())["panoptic_postprocess"]
            settings = {name: {"threshold": post["threshold"], "mask_threshold": post["mask_threshold"]} for name in names}
        for name, side in sides.items():
            side.ask(do="settings", threshold=settings[name]["threshold"], mask_threshold=settings[name]["mask_threshold"])
        for round_index in range(args.repeats):
            for name in names if round_index % 2 == 0 else reversed(names):
                dump = work_dir / f"{config}-{name}.pkl"
                sides[name].seconds.append(sides[name].ask(do="round", dump=str(dump))["seconds"])
        peaks = {name: side.ask(do="quit")["peak_rss_mb"] for name, side in sides.items()}
    finally:
        for side in sides.values():
            side.process.kill() if side.process.poll() is None else None
    predictions = {name: pickle.loads((work_dir / f"{config}-{name}.pkl").read_bytes()) for name in names}
    labels = len(json.loads((Path(folders["pytorch"]) / "config.json").read_text())["id2label"])
    stuff = set(json.loads((Path(folders["pytorch"]) / "config.json").read_text()).get("stuff_label_ids") or [])
    parity = compare_predictions(predictions["pytorch"], predictions["fp32"], labels, stuff) if "fp32" in names else None
    # int8 against fp32 (its reference), or against PyTorch when fp32 is not run
    int8_reference = "fp32" if "fp32" in names else "pytorch"
    int8 = compare_predictions(predictions[int8_reference], predictions["int8"], labels, stuff) if "int8" in names else None
    result: dict[str, Any] = {
        "config": config,
        "images": args.images,
        "size": "photos at the processor's size" if config == "tiny" else args.size_text,
        "threads": args.threads,
        "settings": settings,
        "segments": sum(len(p.segments) for p in predictions["pytorch"]),
        "files_mb": {name: round(_sizes_mb(folders[name]), 1) for name in ("fp32", "int8")},
        "sides": {},
        "fp32_vs_pytorch": parity,
        f"int8_vs_{int8_reference}": int8,
    }
    base = args.images / min(sides["pytorch"].seconds)
    for name in names:
        seconds = sides[name].seconds
        best = args.images / min(seconds)
        result["sides"][name] = {
            "images_per_s": round(best, 3),
            "spread": round(max(seconds) / min(seconds) - 1, 3),
            "speedup": round(best / base, 2),
            "peak_rss_mb": round(peaks[name]),
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="tiny,r50")
    parser.add_argument("--sides", default=",".join(SIDES), help="pytorch is required (the baseline)")
    parser.add_argument("--size", default="800x1066", help="HxW of the r50 images (network size)")
    parser.add_argument("--images", type=int, default=2, help="images per round")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per side (best-of)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=int, default=10, help="r50: queries of 100 kept by the threshold")
    parser.add_argument("--work-dir", default="/tmp/onnx-bench")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        print(json.dumps(prepare(args.configs, Path(args.work_dir))))
        return 0
    args.size_text = args.size
    args.sides = args.sides.split(",")
    args.size = [int(v) for v in args.size.split("x")]
    if args.worker:
        args.config = args.configs
        worker(args)
        return 0
    print(
        f"method: each side in its own process, {args.repeats} interleaved rounds of {args.images} images "
        f"(one per call), best round reported with spread, {args.threads} threads; outputs compared",
        file=sys.stderr,
    )
    failed = False
    for config in args.configs.split(","):
        result = run_config(config, args)
        print(json.dumps(result, indent=2))
        parity = result["fp32_vs_pytorch"]
        if parity is not None and not (
            parity["same_segments"] == parity["images"]
            and parity["pixel_agreement"] >= 0.999
            and (parity["max_score_diff"] or 0.0) <= 1e-4
        ):
            print(f"MISMATCH ({config}): the fp32 export's predictions differ from PyTorch's: {parity}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
