"""Benchmark of the CVAT -> COCO-panoptic converter: images per second for 1 and N workers.

Generates a synthetic CVAT COCO 1.0 export in a temporary folder (default 200 pictures of
640x480, each with two stuff polygons, 3-8 overlapping thing polygons (some multi-part) and one
uncompressed-RLE brush mask with ``iscrowd: 1``), converts it with 1 worker and with
``--workers`` workers, and prints both throughputs and their ratio (measured in the same run).

    python bench/convert_speed.py [--num-images 200] [--size 640x480] [--workers 2] [--seed 0]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from dataset_scripts.cvat_to_panoptic import ConversionOptions, convert_exports

THINGS = ("brick", "pipe", "tile", "excavator")
STUFF = ("floor", "wall")


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


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] + runs) if flat[0] == 1 else runs}


def write_synthetic_export(root: Path, num_images: int, size: tuple[int, int], seed: int) -> Path:
    """A CVAT COCO 1.0 export: ``root/annotations/instances_default.json`` + ``root/images/``."""
    width, height = size
    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(THINGS + STUFF)]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    (root / "images").mkdir(parents=True)
    for index in range(num_images):
        name = f"bench_{index:04d}.jpg"
        images.append({"id": index + 1, "file_name": name, "width": width, "height": height})
        pixels = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR).save(
            root / "images" / name, quality=90
        )
        horizon = float(rng.uniform(0.3, 0.6) * height)
        shapes = [
            ("wall", [[0, 0, width, 0, width, horizon, 0, horizon]]),
            ("floor", [[0, horizon, width, horizon, width, height, 0, height]]),
        ]
        for _ in range(int(rng.integers(3, 9))):
            parts = [_polygon(rng, width, height) for _ in range(int(rng.integers(1, 3)))]
            shapes.append((str(rng.choice(THINGS)), parts))
        for label, parts in shapes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": cat_id[label],
                    "segmentation": parts,
                    "bbox": [0, 0, 0, 0],
                    "area": 0,
                    "iscrowd": 0,
                }
            )
        brush = mask_utils.decode(
            mask_utils.merge(mask_utils.frPyObjects([_polygon(rng, width, height)], height, width))
        )
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": index + 1,
                "category_id": cat_id["brick"],
                "segmentation": _uncompressed_rle(brush.astype(bool)),
                "bbox": [0, 0, 0, 0],
                "area": 0,
                "iscrowd": 1,
            }
        )
    (root / "annotations").mkdir()
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_default.json").write_text(json.dumps(doc))
    return root


def time_conversion(export: Path, out: Path, workers: int) -> float:
    """Seconds to convert ``export`` into ``out`` with ``workers`` processes."""
    options = ConversionOptions(stuff_labels=list(STUFF), num_workers=workers, overwrite=True)
    start = time.perf_counter()
    convert_exports([export], out, options)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--size", default="640x480", help="WxH")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="convert_speed_") as tmp:
        export = write_synthetic_export(Path(tmp) / "export", args.num_images, size, args.seed)  # type: ignore[arg-type]
        rates = {}
        for workers in sorted({1, args.workers}):
            seconds = time_conversion(export, Path(tmp) / f"out_{workers}", workers)
            rates[workers] = args.num_images / seconds
            print(
                f"{workers} worker(s): {args.num_images} images {size[0]}x{size[1]} in {seconds:.2f} s = "
                f"{rates[workers]:.1f} images/s"
            )
        if args.workers != 1:
            print(f"speed-up with {args.workers} workers: {rates[args.workers] / rates[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
