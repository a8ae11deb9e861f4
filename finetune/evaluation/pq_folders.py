"""PQ of COCO-panoptic folders (like panopticapi's ``pq_compute``), and its command line.

``python -m finetune.evaluation.panoptic_quality`` (console script ``detr-panoptic-pq``) runs `main`.
The JSONs are checked and the images paired in `finetune.evaluation.pq_inputs`; a process pool then
decodes each pair of PNGs (`read_panoptic_ids`, the project's fast decoder) and scores it with the
per-image core, `image_pq_stats`.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dataset_scripts.cli_options import add_option, make_parser
from dataset_scripts.panoptic_format import PanopticFormatError, read_panoptic_ids, retain_freed_memory
from finetune.evaluation.pq_core import CategoryIndex, PanopticEvaluationError, image_pq_stats
from finetune.evaluation.pq_inputs import (
    annotations_by_image,
    check_categories,
    check_files,
    image_label,
    load_panoptic_annotations,
    pair_images,
)
from finetune.evaluation.pq_summary import format_tables, results_to_json, summarize

logger = logging.getLogger(__name__)


def _segments_light(segments: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only the keys the core reads (keeps the data sent to worker processes small)."""
    return [
        {
            "id": seg["id"],
            "category_id": seg["category_id"],
            "iscrowd": seg.get("iscrowd", 0),
            "area": seg.get("area", -1),
        }
        for seg in segments
    ]


def build_tasks(
    gt_json: dict[str, Any],
    gt_folder: Path,
    pred_json: dict[str, Any],
    pred_folder: Path,
    gt_path: Any,
    pred_path: Any,
) -> list[dict[str, Any]]:
    """One task per GT image: its PNG paths, segments and the label its errors carry.

    Raises:
        PanopticEvaluationError: bad JSON entries, no annotations, unpairable ids, a missing PNG.
    """
    gt_by_image = annotations_by_image(gt_json, gt_path)
    pred_by_image = annotations_by_image(pred_json, pred_path)
    if not gt_by_image:
        raise PanopticEvaluationError(f"{gt_path}: the ground truth has no annotations")
    if not pred_by_image:
        raise PanopticEvaluationError(
            f"{pred_path}: the prediction JSON has no annotations (nothing to evaluate)"
        )
    pairs = pair_images(gt_by_image, pred_by_image, gt_path, pred_path)
    check_files(pairs, gt_folder, pred_folder)
    missing = [gt_ann["image_id"] for gt_ann, pred_ann in pairs if pred_ann is None]
    if missing:
        logger.warning(
            "%d image(s) have no prediction annotation; their ground-truth segments count as false negatives "
            "(e.g. image id %s)",
            len(missing),
            missing[0],
        )
    return [
        {
            "label": image_label(gt_ann, pred_ann),
            "gt_png": str(gt_folder / gt_ann["file_name"]),
            "pred_png": None if pred_ann is None else str(pred_folder / pred_ann["file_name"]),
            "gt_segments": _segments_light(gt_ann.get("segments_info", [])),
            "pred_segments": [] if pred_ann is None else _segments_light(pred_ann.get("segments_info", [])),
        }
        for gt_ann, pred_ann in pairs
    ]


def _read_ids(path: str, label: str) -> np.ndarray:
    try:
        return read_panoptic_ids(path)
    except (FileNotFoundError, PanopticFormatError) as err:
        raise PanopticEvaluationError(f"image {label}: {err}") from err


def _score_task(task: dict[str, Any], categories: CategoryIndex) -> np.ndarray:
    gt_ids = _read_ids(task["gt_png"], task["label"])
    if task["pred_png"] is None:  # no prediction annotation: an all-void prediction
        pred_ids = np.zeros_like(gt_ids)
    else:
        pred_ids = _read_ids(task["pred_png"], task["label"])
    return image_pq_stats(
        pred_ids,
        task["pred_segments"],
        gt_ids,
        task["gt_segments"],
        categories,
        task["label"],
        gt_areas_from_json=True,
    )


_WORKER_CATEGORIES: CategoryIndex | None = None


def _init_worker(categories: CategoryIndex) -> None:
    global _WORKER_CATEGORIES
    _WORKER_CATEGORIES = categories


def _init_pool_worker(categories: CategoryIndex) -> None:
    retain_freed_memory()  # a process of ours that decodes many PNGs
    _init_worker(categories)


def _score_chunk(tasks: list[dict[str, Any]]) -> np.ndarray:
    assert _WORKER_CATEGORIES is not None
    total = np.zeros((len(_WORKER_CATEGORIES), 4), dtype=np.float64)
    for task in tasks:
        total += _score_task(task, _WORKER_CATEGORIES)
    return total


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def evaluate_folders(
    gt_json_file: str | os.PathLike,
    pred_json_file: str | os.PathLike,
    gt_folder: str | os.PathLike | None = None,
    pred_folder: str | os.PathLike | None = None,
    workers: int | None = None,
) -> tuple[dict[str, Any], np.ndarray, CategoryIndex]:
    """PQ of a COCO-panoptic prediction folder against a GT folder (like ``pq_compute``).

    Args:
        gt_json_file: GT panoptic JSON (its ``categories`` define the classes).
        pred_json_file: Prediction panoptic JSON (``annotations`` with ``image_id``,
            ``file_name``, ``segments_info``; ``images``/``categories`` optional).
        gt_folder / pred_folder: PNG folders; default: the JSON path without ``.json``.
        workers: Worker processes (default: CPU count); images are scored in chunks, so memory
            stays at a few id maps per worker.

    Returns:
        ``(results, stats, categories)``: the `summarize` dict, the ``(C, 4)`` sums and the table.

    Raises:
        PanopticEvaluationError: any bad input; the message names the file, the image and the id.
    """
    gt_json_file, pred_json_file = Path(gt_json_file), Path(pred_json_file)
    gt_folder = Path(gt_folder) if gt_folder else gt_json_file.with_suffix("")
    pred_folder = Path(pred_folder) if pred_folder else pred_json_file.with_suffix("")
    for folder, what in ((gt_folder, "ground-truth"), (pred_folder, "prediction")):
        if not folder.is_dir():
            raise PanopticEvaluationError(f"{what} PNG folder not found: {folder}")
    gt_json = load_panoptic_annotations(gt_json_file, "ground-truth")
    pred_json = load_panoptic_annotations(pred_json_file, "prediction")
    categories = CategoryIndex(check_categories(gt_json, gt_json_file))
    tasks = build_tasks(gt_json, gt_folder, pred_json, pred_folder, gt_json_file, pred_json_file)

    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    stats = np.zeros((len(categories), 4), dtype=np.float64)
    if workers == 1:
        _init_worker(categories)
        stats += _score_chunk(tasks)
    else:
        # Chunks of a few images amortise the inter-process traffic; ordered results keep the
        # floating-point sums reproducible. fork (where available) skips re-importing modules.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        chunk = max(1, min(16, len(tasks) // (4 * workers)))
        with multiprocessing.get_context(method).Pool(workers, _init_pool_worker, (categories,)) as pool:
            for part in pool.imap(_score_chunk, _chunks(tasks, chunk)):
                stats += part
    return summarize(stats, categories), stats, categories


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m finetune.evaluation.panoptic_quality`` (``detr-panoptic-pq``)."""
    parser = make_parser(
        "Panoptic quality of COCO-panoptic predictions (panopticapi semantics, faster; fractions in [0, 1]).",
        prog="python -m finetune.evaluation.panoptic_quality",
    )
    parser.add_argument("--gt-json", required=True, metavar="FILE", help="ground-truth panoptic JSON")
    parser.add_argument(
        "--gt-folder", metavar="DIR", help="ground-truth PNG folder (default: the JSON path without .json)"
    )
    parser.add_argument("--pred-json", required=True, metavar="FILE", help="prediction panoptic JSON")
    parser.add_argument(
        "--pred-folder", metavar="DIR", help="prediction PNG folder (default: the JSON path without .json)"
    )
    add_option(
        parser,
        "output_json",
        aliases=("--json-out",),
        help="write the results (pq_compute layout + per_class, fractions) to this JSON file",
    )
    add_option(
        parser,
        "num_workers",
        aliases=("--workers",),
        type=int,
        default=None,
        help="worker processes (default: CPU count)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit status (2 for bad input, with a one-line error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    start = time.perf_counter()
    retain_freed_memory()  # this process is ours; with --num-workers 1 it decodes every PNG itself
    try:
        results, stats, categories = evaluate_folders(
            args.gt_json, args.pred_json, args.gt_folder, args.pred_folder, workers=args.num_workers
        )
    except PanopticEvaluationError as err:
        logger.error("%s", err)
        return 2
    tables = format_tables(results, stats, categories)
    print(tables.split("\n\n")[0] if args.quiet else tables)
    if args.output_json:
        from dataset_scripts.atomic_io import atomic_write_json

        try:
            atomic_write_json(args.output_json, results_to_json(results), indent=2)
        except OSError as err:
            logger.error("cannot write %s: %s", args.output_json, err.strerror or err)
            return 2
        logger.info("wrote %s", args.output_json)
    logger.info("evaluated %d categories in %.2f s", len(categories), time.perf_counter() - start)
    return 0
