"""Speed of ``python -m finetune.evaluation.panoptic_quality`` against panopticapi's ``pq_compute``.

Generates COCO-panoptic GT and prediction folders (default 500 images at 480x640, 10-40
segments each: stuff bands, blobs and boxes; predictions = shifted GT with class errors, misses,
false positives and void holes), then:

1. the decoder table: every PNG decoder on PyPI that is installed (PIL, libspng via pyspng,
   imagecodecs' libpng and libspng, OpenCV, torchvision), one thread, in this process, on the
   same PNG bytes, alternated, best of ``--repeats``: time per PNG and whether it gives PIL's
   array bit for bit;
2. whole processes, one warm-up run each, then ``--repeats`` rounds alternating them:

   * this repo's CLI (``--workers N``),
   * panopticapi ``pq_compute`` with the same number of worker processes,
   * the decode floors: only decoding every GT and predicted PNG, same workers, with PIL
     (``np.asarray(Image.open(png))``) and with the project's decoder (`read_panoptic_ids`).

Prints best-of-k and spread of each, the ratios, and checks that both evaluators give the same
numbers (to 1e-9). ``OMP_NUM_THREADS`` etc. are set to 1 in every process.

    python bench/pq_speed.py [--images 500] [--height 480 --width 640] [--repeats 5] [--workers N]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = [
    {"id": i + 1, "name": f"thing{i}", "isthing": 1, "color": [i * 20, 0, 0], "supercategory": "thing"}
    for i in range(12)
] + [
    {"id": 100 + i, "name": f"stuff{i}", "isthing": 0, "color": [0, i * 20, 0], "supercategory": "stuff"}
    for i in range(6)
]
THING_IDS = [c["id"] for c in CATEGORIES if c["isthing"]]
STUFF_IDS = [c["id"] for c in CATEGORIES if not c["isthing"]]


def _shapes(rng: np.random.Generator, height: int, width: int) -> list[tuple[np.ndarray, int, bool]]:
    """Masks painted in order: 2-4 stuff bands, then things (ellipse blobs and boxes)."""
    yy, xx = np.ogrid[0:height, 0:width]
    shapes = []
    edges = np.sort(rng.integers(0, height, size=int(rng.integers(1, 4))))
    bounds = [0, *edges.tolist(), height]
    for top, bottom in zip(bounds[:-1], bounds[1:], strict=True):
        wobble = (10 * np.sin(xx / rng.uniform(20, 80) + rng.uniform(0, 6))).astype(int)
        shapes.append(((yy >= top + wobble) & (yy < bottom + wobble), int(rng.choice(STUFF_IDS)), False))
    for _ in range(int(rng.integers(8, 37))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(8, height / 5), rng.uniform(8, width / 5)
        # evaluate the shape only inside its box (1.3 x radius covers the wobbly blob)
        y0, y1 = max(int(cy - 1.3 * ry), 0), min(int(cy + 1.3 * ry) + 1, height)
        x0, x1 = max(int(cx - 1.3 * rx), 0), min(int(cx + 1.3 * rx) + 1, width)
        sy, sx = yy[y0:y1] - cy, xx[:, x0:x1] - cx
        if rng.random() < 0.5:
            inside = (sy / ry) ** 2 + (sx / rx) ** 2 < 1 + 0.3 * np.sin(np.arctan2(sy, sx) * 5)
        else:
            inside = (np.abs(sy) < ry) & (np.abs(sx) < rx)
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y1, x0:x1] = inside
        shapes.append((mask, int(rng.choice(THING_IDS)), rng.random() < 0.05))
    return shapes


def _render(shapes, height, width, rng, shift: bool):
    ids = np.zeros((height, width), dtype=np.int64)
    category, crowd = {}, {}
    for mask, cat, is_crowd in shapes:
        if shift:
            mask = np.roll(mask, tuple(rng.integers(-6, 7, size=2)), axis=(0, 1))
        seg_id = int(rng.integers(1, 2**24 - 1))
        ids[mask] = seg_id
        category[seg_id], crowd[seg_id] = cat, is_crowd
    return ids, category, crowd


def _segments(ids, category, crowd):
    from dataset_scripts.panoptic_format import segment_stats  # not at the top: keeps the floor process lean

    return [
        {
            "id": seg_id,
            "category_id": category[seg_id],
            "iscrowd": int(crowd[seg_id]),
            "area": s.area,
            "bbox": s.bbox,
        }
        for seg_id, s in segment_stats(ids).items()
    ]


def _make_image(args: tuple[int, int, int, str]) -> tuple[dict, dict]:
    index, height, width, root = args
    rng = np.random.default_rng(index)
    shapes = _shapes(rng, height, width)
    void = rng.random() < 0.5
    gt_ids, gt_cat, gt_crowd = _render(shapes, height, width, rng, shift=False)
    if void:  # an unlabelled stripe
        gt_ids[:, : int(width * rng.uniform(0.02, 0.15))] = 0
    pred_shapes = []
    for mask, cat, _ in shapes:
        if rng.random() < 0.1:
            continue  # missed
        if rng.random() < 0.1:
            cat = int(rng.choice(THING_IDS if cat in THING_IDS else STUFF_IDS))
        pred_shapes.append((mask, cat, False))
    num_false = int(rng.integers(0, 4))
    if num_false:
        for mask, _, _ in _shapes(rng, height, width)[-num_false:]:
            pred_shapes.append((mask, int(rng.choice(THING_IDS)), False))  # false positives
    pred_ids, pred_cat, pred_crowd = _render(pred_shapes, height, width, rng, shift=True)
    from dataset_scripts.panoptic_format import id2rgb

    name = f"{index:06d}.png"
    Image.fromarray(id2rgb(gt_ids)).save(Path(root) / "gt" / name)
    Image.fromarray(id2rgb(pred_ids)).save(Path(root) / "pred" / name)
    gt_ann = {"image_id": index, "file_name": name, "segments_info": _segments(gt_ids, gt_cat, gt_crowd)}
    pred_ann = {
        "image_id": index,
        "file_name": name,
        "segments_info": _segments(pred_ids, pred_cat, pred_crowd),
    }
    for seg in pred_ann["segments_info"]:
        del seg["iscrowd"]
    return gt_ann, pred_ann


def generate(root: Path, num_images: int, height: int, width: int, workers: int) -> None:
    (root / "gt").mkdir(parents=True)
    (root / "pred").mkdir()
    with multiprocessing.Pool(workers) as pool:
        pairs = pool.map(_make_image, [(i, height, width, str(root)) for i in range(num_images)], chunksize=8)
    images = [
        {"id": i, "file_name": f"{i:06d}.jpg", "height": height, "width": width} for i in range(num_images)
    ]
    for name, index in (("gt", 0), ("pred", 1)):
        data = {"images": images, "annotations": [pair[index] for pair in pairs], "categories": CATEGORIES}
        (root / f"{name}.json").write_text(json.dumps(data))


def _decode_pil(path: str) -> int:
    return int(np.asarray(Image.open(path)).shape[0])


def _decode_project(path: str) -> int:
    from dataset_scripts.panoptic_format import read_panoptic_ids

    return int(read_panoptic_ids(path).shape[0])


def decode_only(decoder: str, folders: list[str], workers: int) -> None:
    """A floor: decode every PNG of ``folders`` with ``decoder`` (pil | project), ``workers`` processes."""
    from dataset_scripts.panoptic_format import retain_freed_memory

    decode = {"pil": _decode_pil, "project": _decode_project}[decoder]
    retain_freed_memory()  # as the CLI does (inherited by the forked workers)
    if decoder == "project":
        decode(next(Path(folders[0]).glob("*.png")))  # import before forking, as the CLI does
    paths = sorted(str(p) for folder in folders for p in Path(folder).glob("*.png"))
    with multiprocessing.Pool(workers) as pool:
        sum(pool.imap_unordered(decode, paths, chunksize=16))


def _png_decoders() -> dict[str, Callable[[bytes], np.ndarray]]:
    """The installed PNG decoders, each bytes -> (H, W, 3) uint8 RGB on one thread."""
    decoders: dict[str, Callable[[bytes], np.ndarray]] = {
        "PIL": lambda data: np.asarray(Image.open(io.BytesIO(data)))
    }
    try:
        import pyspng

        decoders["pyspng (libspng)"] = pyspng.load
    except ImportError:
        pass
    try:
        import imagecodecs

        decoders["imagecodecs png (libpng)"] = imagecodecs.png_decode
        if imagecodecs.SPNG.available:
            decoders["imagecodecs spng"] = imagecodecs.spng_decode
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(1)
        decoders["opencv imdecode"] = lambda data: cv2.cvtColor(
            cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB
        )
    except ImportError:
        pass
    try:
        import torch
        from torchvision.io import decode_png

        torch.set_num_threads(1)
        decoders["torchvision decode_png"] = lambda data: (
            decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8)).permute(1, 2, 0).numpy()
        )
    except ImportError:
        pass
    return decoders


def decoder_table(folders: list[str], repeats: int, limit: int = 200) -> None:
    """Time per PNG of every installed decoder on the same bytes (in memory), interleaved; best of k."""
    paths = sorted(str(p) for folder in folders for p in Path(folder).glob("*.png"))[:limit]
    blobs = [Path(p).read_bytes() for p in paths]
    from dataset_scripts.panoptic_format import retain_freed_memory

    retain_freed_memory()  # every decoder allocates its output per PNG: reuse memory for all alike
    decoders = _png_decoders()
    reference = [decoders["PIL"](data) for data in blobs]
    identical = {
        name: all(
            out.dtype == ref.dtype and np.array_equal(out, ref)
            for out, ref in zip(map(decode, blobs), reference, strict=True)
        )
        for name, decode in decoders.items()
    }
    # Interleaved PNG by PNG (every decoder on one PNG, then the next PNG), so that load from
    # other jobs hits all decoders alike; one total per decoder and round.
    times: dict[str, list[float]] = {name: [] for name in decoders}
    for _ in range(repeats):
        total = dict.fromkeys(decoders, 0.0)
        for data in blobs:
            for name, decode in decoders.items():
                start = time.perf_counter()
                decode(data)
                total[name] += time.perf_counter() - start
        for name in decoders:
            times[name].append(total[name] / len(blobs))
    print(f"decoders, {len(blobs)} PNGs from memory, 1 thread, interleaved rounds (each decoder once per round), best of {repeats}:")
    pil = min(times["PIL"])
    for name in sorted(decoders, key=lambda n: min(times[n])):
        best = min(times[name])
        print(
            f"  {name:24s} {1000 * best:6.2f} ms/PNG (spread {100 * (max(times[name]) / best - 1):4.0f}%)  "
            f"{pil / best:4.2f}x PIL  bit-identical to PIL: {identical[name]}"
        )


# pq_compute takes its worker count from multiprocessing.cpu_count(): set it to ours.
PANOPTICAPI = (
    "import json, multiprocessing, sys\n"
    "multiprocessing.cpu_count = lambda: int(sys.argv[6])\n"
    "from panopticapi.evaluation import pq_compute\n"
    "r = pq_compute(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])\n"
    "json.dump(r, open(sys.argv[5], 'w'))\n"
)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _timed(cmd: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + sys of the process and its workers) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {**os.environ, **dict.fromkeys(THREAD_VARS, "1")}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def _spread(values: list[float]) -> str:
    """(max - min) / min, in percent."""
    return f"{100 * (max(values) / min(values) - 1):.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per tool; the fastest counts")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--decode-only", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.decode_only:
        decode_only(args.decode_only[0], args.decode_only[1:], args.workers)
        return

    with tempfile.TemporaryDirectory(prefix="pq_speed_") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        generate(root, args.images, args.height, args.width, args.workers)
        segs = [len(a["segments_info"]) for a in json.loads((root / "gt.json").read_text())["annotations"]]
        print(
            f"generated {args.images} images {args.height}x{args.width}, {np.mean(segs):.1f} GT segments/image "
            f"(min {min(segs)}, max {max(segs)}) in {time.perf_counter() - start:.1f} s; workers {args.workers}"
        )
        gt = [str(root / "gt.json"), str(root / "gt")]
        pred = [str(root / "pred.json"), str(root / "pred")]
        ours_cmd = [
            sys.executable,
            "-m",
            "finetune.evaluation.panoptic_quality",
            "--gt-json",
            gt[0],
            "--gt-folder",
            gt[1],
        ]
        ours_cmd += ["--pred-json", pred[0], "--pred-folder", pred[1], "--workers", str(args.workers)]
        ours_cmd += ["--json-out", str(root / "ours.json"), "--quiet"]
        ref_cmd = [sys.executable, "-c", PANOPTICAPI, gt[0], pred[0], gt[1], pred[1], str(root / "ref.json")]
        ref_cmd.append(str(args.workers))
        floor = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--workers",
            str(args.workers),
            "--decode-only",
        ]
        commands = {
            "ours": ours_cmd,
            "panopticapi": ref_cmd,
            "floor PIL": [*floor, "pil", gt[1], pred[1]],
            "floor project": [*floor, "project", gt[1], pred[1]],
        }
        decoder_table([gt[1], pred[1]], args.repeats)
        for cmd in commands.values():  # warm-up: page cache, imports
            _timed(cmd)
        wall: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):  # interleaved so that machine noise hits all of them alike
            for name, cmd in commands.items():
                w, c = _timed(cmd)
                wall[name].append(w)
                cpu[name].append(c)
        # Wall time is what a user waits for; CPU time (all processes) is steadier on a shared machine.
        best_wall = {name: min(values) for name, values in wall.items()}
        best_cpu = {name: min(values) for name, values in cpu.items()}
        print(
            f"whole processes, {args.workers} worker(s) each, 1 warm-up each, then {args.repeats} interleaved "
            "rounds (every tool once per round, same order); best of k and spread ((max - min) / min):"
        )
        for name in commands:
            print(
                f"  {name:14s}: wall best {best_wall[name]:6.2f} s (spread {_spread(wall[name])}; runs "
                f"{', '.join(f'{v:.2f}' for v in wall[name])}); CPU best {best_cpu[name]:6.2f} s "
                f"(spread {_spread(cpu[name])})"
            )
        for label, best in (("wall", best_wall), ("CPU ", best_cpu)):
            print(
                f"{label}: speed-up vs panopticapi {best['panopticapi'] / best['ours']:.2f}x (goal >= 2x); "
                f"ours / floor: {best['ours'] / best['floor project']:.2f}x the project decoder's, "
                f"{best['ours'] / best['floor PIL']:.2f}x PIL's; decode floor PIL / project "
                f"{best['floor PIL'] / best['floor project']:.2f}x"
            )

        ours = json.loads((root / "ours.json").read_text())
        ref = json.loads((root / "ref.json").read_text())
        diff = max(
            [abs(ours[g][k] - ref[g][k]) for g in ("All", "Things", "Stuff") for k in ("pq", "sq", "rq")]
            + [
                abs(ours["per_class"][c][k] - ref["per_class"][c][k])
                for c in ref["per_class"]
                for k in ("pq", "sq", "rq")
            ]
        )
        same_n = all(ours[g]["n"] == ref[g]["n"] for g in ("All", "Things", "Stuff"))
        print(
            f"PQ ours {100 * ours['All']['pq']:.3f} / panopticapi {100 * ref['All']['pq']:.3f}; "
            f"max |difference| over all PQ/SQ/RQ values {diff:.2e}; same n: {same_n}"
        )
        if diff > 1e-9 or not same_n:
            raise SystemExit("results differ from panopticapi")


if __name__ == "__main__":
    main()
