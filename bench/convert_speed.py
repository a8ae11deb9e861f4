"""Benchmark of the CVAT -> COCO-panoptic converter: images per second with 1 and N workers.

Writes a synthetic CVAT COCO 1.0 export in a temporary folder with the sample package's COCO writer
(default 200 pictures of 640x480, each with two stuff polygons, 3-8 overlapping thing polygons (some
multi-part) and one uncompressed-RLE brush mask with ``iscrowd: 1``), then converts it with 1 worker
and with ``--workers`` workers and prints both throughputs and their ratio, measured in the same run.

How the two sides are kept comparable:

* every timed conversion runs in a fresh Python subprocess, which imports the converter and converts
  a 2-picture warm-up export before the clock starts: lazy imports and first-call costs are paid
  outside the timing on both sides, and the N-worker pool is forked from an equally warm process
  (its start-up is timed: a user pays it);
* ``--warmup`` untimed rounds of both sides first (page cache, byte-compiled files);
* ``--repeats`` timed rounds alternating the order (1 then N, N then 1, ...) so that a load change on
  a shared machine hits both sides alike;
* OMP/MKL/OpenBLAS threads are set to 1 in every process (the converter's parallelism is its worker
  processes); the output folder is deleted between runs, outside the timing.

Reported: min / median / max seconds and the best-of-k images/s of each side, the best-of-k speed-up
and the median (min-max) of the per-round speed-ups.

    python bench/convert_speed.py [--num-images 200] [--size 640x480] [--workers 2] [--repeats 5]
        [--warmup 1] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_scripts.cvat_to_panoptic import ConversionOptions, convert_exports
from dataset_scripts.sample.coco_writer import coco_document
from dataset_scripts.sample.jpeg import encode_image
from dataset_scripts.sample.scene import Shape
from dataset_scripts.sample.task import TaskImage, TaskShape

logger = logging.getLogger("convert_speed")

REPO_ROOT = Path(__file__).resolve().parents[1]
THINGS = ("brick", "pipe", "tile", "excavator")
STUFF = ("floor", "wall")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _polygon(rng: np.random.Generator, width: int, height: int) -> list[float]:
    """A random star-shaped polygon (8-24 vertices) somewhere in the picture."""
    cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
    radius = rng.uniform(0.05, 0.25) * min(width, height)
    n = int(rng.integers(8, 25))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.5, 1.0, n)
    xs = np.clip(cx + radii * np.cos(angles), 0, width)
    ys = np.clip(cy + radii * np.sin(angles), 0, height)
    return np.stack([xs, ys], 1).ravel().round(2).tolist()


def _synthetic_image(rng: np.random.Generator, name: str, width: int, height: int) -> TaskImage:
    """Two stuff bands, 3-8 (multi-part) thing polygons and one brick brush mask (RLE, crowd)."""
    horizon = float(rng.uniform(0.3, 0.6) * height)
    shapes = [
        TaskShape(Shape("wall", [[0, 0, width, 0, width, horizon, 0, horizon]])),
        TaskShape(Shape("floor", [[0, horizon, width, horizon, width, height, 0, height]])),
    ]
    for _ in range(int(rng.integers(3, 9))):
        parts = [_polygon(rng, width, height) for _ in range(int(rng.integers(1, 3)))]
        shapes.append(TaskShape(Shape(str(rng.choice(THINGS)), parts)))
    shapes.append(TaskShape(Shape("brick", [_polygon(rng, width, height)]), encoding="rle"))
    return TaskImage(name, width, height, shapes)


def write_synthetic_export(root: Path, num_images: int, size: tuple[int, int], seed: int) -> Path:
    """A CVAT COCO 1.0 export: ``root/annotations/instances_default.json`` + ``root/images/``."""
    width, height = size
    rng = np.random.default_rng(seed)
    images = []
    (root / "images").mkdir(parents=True)
    for index in range(num_images):
        image = _synthetic_image(rng, f"bench_{index:04d}.jpg", width, height)
        blocks = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(blocks).resize(size, Image.Resampling.BILINEAR))
        (root / "images" / image.file_name).write_bytes(encode_image(pixels, quality=90))
        images.append(image)
    (root / "annotations").mkdir()
    doc = coco_document((*THINGS, *STUFF), images)
    (root / "annotations" / "instances_default.json").write_text(json.dumps(doc))
    return root


def _options(workers: int) -> ConversionOptions:
    return ConversionOptions(stuff_labels=list(STUFF), num_workers=workers)


def time_one_conversion(export: Path, out: Path, workers: int, warm_export: Path) -> float:
    """Seconds to convert ``export`` into ``out`` with ``workers`` processes, after a warm-up conversion.

    Runs in the subprocess of one timed run (see the module docstring).
    """
    with tempfile.TemporaryDirectory(prefix="convert_speed_warm_") as tmp:
        convert_exports([warm_export], Path(tmp) / "out", _options(1))
    start = time.perf_counter()
    convert_exports([export], out, _options(workers))
    return time.perf_counter() - start


def run_in_subprocess(export: Path, out: Path, workers: int, warm_export: Path) -> float:
    """`time_one_conversion` in a fresh interpreter (this repository first on its path); deletes ``out``."""
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, "1")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, __file__, "--time-one", str(export), str(out), str(warm_export)]
    command += ["--workers", str(workers)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"timed conversion with {workers} worker(s) failed:\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def measure(tmp: Path, export: Path, warm_export: Path, workers: int, repeats: int, warmup: int) -> dict:
    """``{workers: [seconds of each timed run]}`` for 1 and ``workers`` workers, in alternating order."""
    sides = sorted({1, workers})
    seconds: dict[int, list[float]] = {w: [] for w in sides}
    for round_index in range(warmup + repeats):
        order = sides if round_index % 2 == 0 else sides[::-1]
        for w in order:
            elapsed = run_in_subprocess(export, tmp / f"out_{w}", w, warm_export)
            timed = round_index >= warmup
            logger.info("%s %d worker(s): %.2f s", "run" if timed else "warm-up", w, elapsed)
            if timed:
                seconds[w].append(elapsed)
    return seconds


def report(seconds: dict[int, list[float]], num_images: int, size: tuple[int, int]) -> None:
    """Print the spread of each side and the speed-ups (best-of-k and per round)."""
    print(
        f"\nconversion of {num_images} images {size[0]}x{size[1]}, {len(next(iter(seconds.values())))} runs each"
    )
    print(
        "method: every conversion in a fresh process warmed on a 2-picture export; untimed warm-up rounds, "
        "then timed rounds alternating which side goes first; min / median / max per side, best-of-k and "
        "per-round speed-ups"
    )
    print(
        f"{'workers':>7} {'min s':>7} {'median s':>9} {'max s':>7} {'best images/s':>14} {'median images/s':>16}"
    )
    for w, runs in seconds.items():
        print(
            f"{w:>7} {min(runs):>7.2f} {statistics.median(runs):>9.2f} {max(runs):>7.2f} "
            f"{num_images / min(runs):>14.1f} {num_images / statistics.median(runs):>16.1f}"
        )
    if len(seconds) == 2:
        (one, single), (n, multi) = seconds.items()
        per_round = [a / b for a, b in zip(single, multi, strict=True)]
        print(
            f"speed-up with {n} workers: best-of-{len(single)} {min(single) / min(multi):.2f}x, "
            f"per round median {statistics.median(per_round):.2f}x "
            f"(min {min(per_round):.2f}x, max {max(per_round):.2f}x)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--size", default="640x480", help="WxH")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds of both sides first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--time-one", nargs=3, metavar=("EXPORT", "OUT", "WARM_EXPORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.time_one:
        export, out, warm = (Path(p) for p in args.time_one)
        print(json.dumps({"seconds": time_one_conversion(export, out, args.workers, warm)}))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.num_images < 1 or args.workers < 1 or args.repeats < 1 or args.warmup < 0 or len(size) != 2:
        parser.error("need --num-images, --workers, --repeats >= 1, --warmup >= 0 and --size WxH")
    with tempfile.TemporaryDirectory(prefix="convert_speed_") as tmp_name:
        tmp = Path(tmp_name)
        export = write_synthetic_export(tmp / "export", args.num_images, size, args.seed)  # type: ignore[arg-type]
        warm = write_synthetic_export(tmp / "warm", 2, size, args.seed + 1)  # type: ignore[arg-type]
        seconds = measure(tmp, export, warm, args.workers, args.repeats, args.warmup)
    report(seconds, args.num_images, size)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
