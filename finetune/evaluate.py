"""Evaluate a saved checkpoint on a dataset split: PQ / SQ / RQ (all, things, stuff, per class) and box mAP.

    python finetune/evaluate.py --model outputs/quickstart/final --dataset outputs/sample_panoptic \
        [--split val] [--threshold T] [--batch-size 4] [--save-predictions DIR] [--output-json F] [--full-forward]

``--model``: a checkpoint folder (``output_dir/final``: config with ``stuff_label_ids``, weights,
preprocessor) or a Hub id. ``--dataset``: a COCO-panoptic folder (built into a `datasets` cache
with `dataset_scripts.panoptic_builder`) or a folder written by ``save_to_disk``.

The post-processing thresholds default to the checkpoint's (the ``eval`` settings of training, saved
in its config), so a default run reproduces ``all_results.json``; model labels map to the dataset's
categories with `finetune.inference.label_to_category` (saved category ids, checked by name).

PQ uses the panoptic predictions of `finetune.inference.PanopticPredictor` (stuff fused, original
size; the mask head runs on the queries above the threshold only, ``--full-forward`` runs it on all
for comparison) against the dataset's panoptic PNGs; box mAP uses DETR's box head (all queries,
threshold 0, as COCO ranks by score) from the same forward pass, like the evaluation during training. ``--save-predictions DIR`` writes
``DIR/panoptic_{split}.json`` + ``DIR/panoptic_{split}/*.png`` (COCO-panoptic), which
``python -m finetune.evaluation.panoptic_quality`` and other tools can score.

All metrics, printed and in ``--output-json``, are fractions in [0, 1], like training's logs and
``all_results.json`` (panopticapi prints percent).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:  # run as a file (`python finetune/evaluate.py`), this needs the project installed: one line says so
    import finetune  # noqa: F401
except ModuleNotFoundError as missing:
    print(f"{sys.argv[0]}: {missing}: install detr-panoptic with `pip install -e .` from the repository root", file=sys.stderr)
    raise SystemExit(2) from None

from dataset_scripts.atomic_io import atomic_directory, atomic_write_json
from dataset_scripts.cli_options import add_option, make_parser
from finetune.predictor_options import add_predictor_arguments, predictor_from_args

if TYPE_CHECKING:  # torch-backed modules are imported where they are used: `--help` stays fast
    from finetune.evaluation.box_map import BoxMapAccumulator
    from finetune.evaluation.panoptic_quality import PQAccumulator

logger = logging.getLogger("finetune.evaluate")


class EvaluationSetupError(ValueError):
    """The dataset or the checkpoint cannot be evaluated together (the message says why)."""


def load_split(
    dataset: str | os.PathLike, split: str, cache_dir: str | None = None
) -> tuple[Any, list[dict]]:
    """One split of a COCO-panoptic folder or a ``save_to_disk`` folder, and its category table."""
    import datasets

    from dataset_scripts.panoptic_builder import build_hf_dataset, load_categories

    path = Path(dataset)
    if not path.is_dir():
        raise EvaluationSetupError(f"--dataset {path}: no such folder")
    if (path / "annotations").is_dir():
        data = build_hf_dataset(path, cache_dir=cache_dir)
    elif (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        data = datasets.load_from_disk(str(path))
    else:
        raise EvaluationSetupError(
            f"--dataset {path} is neither a COCO-panoptic folder (annotations/) nor a save_to_disk folder"
        )
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise EvaluationSetupError(f"--dataset {path} has no split '{split}' (it has {list(data)})")
        data = data[split]
    return data, load_categories(data)


def label_categories(model_config: Any, categories: list[dict]) -> dict[int, int]:
    """Category id of each model label (`finetune.inference.label_to_category`); logs categories it lacks.

    Raises:
        LabelMismatchError: the model's labels do not match the dataset's categories.
    """
    from finetune.inference import label_to_category

    mapping = label_to_category(model_config, categories)
    predicted = set(mapping.values())
    lacking = sorted(c["name"] for c in categories if int(c["id"]) not in predicted)
    if lacking:
        logger.warning(
            "the model has no label for the dataset categories %s: they are never predicted", lacking
        )
    return mapping


@dataclass
class _SavedPredictions:
    """The COCO-panoptic folder `--save-predictions` writes, collected image by image."""

    names: dict[int, str]  # row index -> unique PNG stem (`finetune.predict.output_stems`)
    pngs: dict[str, bytes] = field(default_factory=dict)
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def add(self, index: int, row: dict, prediction: Any, to_category: dict[int, int]) -> None:
        from dataset_scripts.panoptic_format import encode_panoptic_png
        from finetune.predict import prediction_annotation

        image_id, png_name = int(row["image_id"]), f"{self.names[index]}.png"
        self.pngs[png_name] = encode_panoptic_png(prediction.ids)
        self.images.append(
            {"id": image_id, "file_name": row["file_name"], "height": row["height"], "width": row["width"]}
        )
        self.annotations.append(prediction_annotation(prediction, image_id, png_name, to_category))

    def write(self, folder: str | os.PathLike, split_name: str, categories: list[dict]) -> None:
        """``folder/panoptic_{split}.json`` + ``folder/panoptic_{split}/*.png``, all or nothing."""
        with atomic_directory(folder, overwrite=True) as tmp:
            png_dir = tmp / f"panoptic_{split_name}"
            png_dir.mkdir()
            for name, data in self.pngs.items():
                (png_dir / name).write_bytes(data)
            json_categories = [
                {k: c[k] for k in ("id", "name", "isthing", "color") if k in c}
                | {"isthing": int(bool(c["isthing"]))}
                for c in categories
            ]
            atomic_write_json(
                tmp / f"panoptic_{split_name}.json",
                {"images": self.images, "annotations": self.annotations, "categories": json_categories},
            )
        logger.info("wrote %d predictions to %s", len(self.annotations), folder)


def _predicted_batches(predictor: Any, split: Any, count: int) -> Iterator[tuple[int, list[dict], Any]]:
    """``(index of the first row, rows, BatchOutput)`` per batch of ``predictor.batch_size`` rows."""
    from tqdm import tqdm

    for start in tqdm(range(0, count, predictor.batch_size), desc="evaluate", unit="batch"):
        rows = [split[i] for i in range(start, min(start + predictor.batch_size, count))]  # decoded once
        yield start, rows, predictor.predict_batch([row["image"] for row in rows])


def evaluate_split(
    predictor: Any,
    split: Any,
    categories: list[dict],
    save_predictions: str | os.PathLike | None = None,
    split_name: str = "val",
    max_images: int | None = None,
) -> tuple[dict[str, Any], PQAccumulator, BoxMapAccumulator]:
    """Run ``predictor`` over ``split`` and score it.

    Args:
        predictor: A `PanopticPredictor` (its ``predict_batch`` gives the panoptic predictions and, from
            the same forward pass, every query's boxes for mAP).
        split: Rows of interface 2 (``image``, ``panoptic``, ``segments_info``, ``image_id``, ...).
        categories: `load_categories(split)`; model labels map to them by `label_categories`.
        save_predictions: Also write the predictions as a COCO-panoptic folder there.
        split_name: Names the written JSON / PNG folder.
        max_images: Evaluate only the first N rows.

    Returns:
        ``(results, pq_accumulator, box_accumulator)``; ``results`` has the keys of
        ``all_results.json`` (``pq``, ``sq``, ``rq``, ``pq_things``..., ``box_map``...,
        ``per_class_pq`` {name: pq}) plus ``panoptic_quality`` (pq_compute layout) and ``num_images``.
    """
    import numpy as np

    from finetune.evaluation.box_map import BoxMapAccumulator
    from finetune.evaluation.panoptic_quality import PQAccumulator, results_to_json
    from finetune.evaluation.scoring import flat_results, update_box_map
    from finetune.predict import output_stems

    if max_images is not None and max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {max_images}")
    to_category = label_categories(predictor.model.config, categories)
    pq, boxes = PQAccumulator(categories), BoxMapAccumulator(categories)
    count = len(split) if max_images is None else min(max_images, len(split))
    saved = None
    if save_predictions is not None:
        stems = output_stems([Path(name) for name in list(split["file_name"])[:count]])
        saved = _SavedPredictions(names=dict(enumerate(stems)))
    for start, rows, output in _predicted_batches(predictor, split, count):
        for offset, (row, prediction) in enumerate(zip(rows, output.predictions, strict=True)):
            image_id, gt_segments = int(row["image_id"]), list(row["segments_info"])
            size = (row["image"].height, row["image"].width)
            gt_rgb = np.asarray(row["panoptic"].convert("RGB"))  # the PQ core reads RGB-encoded ids directly
            pred_segments = [
                {"id": s["id"], "category_id": to_category[s["label_id"]]} for s in prediction.segments
            ]
            pq.update(prediction.ids, pred_segments, gt_rgb, gt_segments, image_id=image_id)
            update_box_map(
                boxes,
                predictor.image_processor,
                output.logits[offset],
                output.pred_boxes[offset],
                image_id,
                size,
                gt_segments,
                to_category,
            )
            if saved is not None:
                saved.add(start + offset, row, prediction, to_category)
    if saved is not None:
        saved.write(save_predictions, split_name, categories)
    summary = pq.compute()
    results = flat_results(categories, boxes.compute(), summary, pq.num_images)
    results["panoptic_quality"] = results_to_json(summary)
    return results, pq, boxes


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``detr-panoptic-evaluate``."""
    parser = make_parser("Evaluate a checkpoint: PQ tables and box mAP (fractions in [0, 1]).")
    add_predictor_arguments(parser)
    add_option(parser, "dataset", required=True, help="COCO-panoptic folder or save_to_disk folder")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument(
        "--max-images", type=int, default=None, metavar="N", help="evaluate only the first N images"
    )
    parser.add_argument(
        "--cache-dir", default=None, metavar="DIR", help="datasets cache for a COCO-panoptic folder"
    )
    parser.add_argument(
        "--save-predictions", default=None, metavar="DIR", help="write COCO-panoptic predictions to this folder"
    )
    add_option(
        parser, "output_json", aliases=("--json-out",), default=None, help="write the metrics to this JSON file"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``detr-panoptic-evaluate`` command; returns the exit status (2 for bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from finetune.inference import ModelLoadError

    try:
        split, categories = load_split(args.dataset, args.split, args.cache_dir)
        predictor = predictor_from_args(args)
        results, pq, _ = evaluate_split(
            predictor,
            split,
            categories,
            args.save_predictions,
            split_name=args.split,
            max_images=args.max_images,
        )
    except (EvaluationSetupError, ModelLoadError, FileNotFoundError, ValueError) as err:
        logger.error("%s", err)
        return 2
    print(pq.table())
    print(
        f"\nbox mAP {results['box_map']:.3f}  AP50 {results['box_map_50']:.3f}  "
        f"AP75 {results['box_map_75']:.3f}   (fractions; {results['num_images']} images, split {args.split})"
    )
    if args.output_json:
        atomic_write_json(args.output_json, results, indent=2)
        logger.info("wrote the metrics to %s", args.output_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
