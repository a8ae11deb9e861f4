"""Evaluate a saved checkpoint on a dataset split: PQ / SQ / RQ (all, things, stuff, per class) and box mAP.

    python finetune/evaluate.py --model outputs/quickstart/final --dataset outputs/sample_panoptic \
        [--split val] [--threshold T] [--batch-size 4] [--save-predictions DIR] [--json-out F]

``--model``: a checkpoint folder (``output_dir/final``: config with ``stuff_label_ids``, weights,
preprocessor) or a Hub id. ``--dataset``: a COCO-panoptic folder (built into a `datasets` cache
with `dataset_scripts.panoptic_builder`) or a folder written by ``save_to_disk``.

The post-processing thresholds default to the checkpoint's (the ``eval`` settings of training, saved
in its config), so a default run reproduces ``all_results.json``; model labels map to the dataset's
categories with `finetune.inference.label_to_category` (saved category ids, checked by name).

PQ uses the panoptic predictions of `finetune.inference.PanopticPredictor` (stuff fused, original
size) against the dataset's panoptic PNGs; box mAP uses DETR's box head (all queries, threshold 0,
as COCO ranks by score), like the evaluation during training. ``--save-predictions DIR`` writes
``DIR/panoptic_{split}.json`` + ``DIR/panoptic_{split}/*.png`` (COCO-panoptic), which
``python -m finetune.evaluation.panoptic_quality`` and other tools can score.
"""

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dataset_scripts.atomic_io import atomic_directory, atomic_write_json
from finetune.evaluation.box_map import BoxMapAccumulator
from finetune.evaluation.panoptic_quality import PQAccumulator, results_to_json

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


def _gt_boxes(segments: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.array([s["bbox"] for s in segments], dtype=np.float64).reshape(-1, 4)
    cats = np.array([s["category_id"] for s in segments], dtype=np.int64)
    crowd = np.array([s.get("iscrowd", 0) for s in segments], dtype=np.int64)
    return boxes, cats, crowd


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
        predictor: A `PanopticPredictor`.
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
    from dataset_scripts.panoptic_format import encode_panoptic_png

    label_to_category = label_categories(predictor.model.config, categories)
    processor = predictor.image_processor
    pq = PQAccumulator(categories)
    boxes = BoxMapAccumulator(categories)
    captured: list[Any] = []
    # The predictor runs the model once per batch; its raw outputs also give DETR's boxes for mAP.
    hook = predictor.model.register_forward_hook(lambda module, args, output: captured.append(output))
    written: dict[str, bytes] = {}
    annotations, image_infos = [], []
    count = len(split) if max_images is None else min(max_images, len(split))
    try:
        for start in tqdm(range(0, count, predictor.batch_size), desc="evaluate", unit="batch"):
            rows = [split[i] for i in range(start, min(start + predictor.batch_size, count))]  # decoded once
            images = [row["image"] for row in rows]
            captured.clear()
            predictions = predictor.predict(images)
            assert len(captured) == 1, "one forward pass per batch expected"
            sizes = [(image.height, image.width) for image in images]
            detections = processor.post_process_object_detection(
                captured[0], threshold=0.0, target_sizes=sizes
            )
            for row, prediction, detection, size in zip(rows, predictions, detections, sizes, strict=True):
                image_id = int(row["image_id"])
                gt_rgb = np.asarray(row["panoptic"].convert("RGB"))  # the core reads RGB-encoded ids directly
                gt_segments = list(row["segments_info"])
                pred_segments = [
                    {"id": s["id"], "category_id": label_to_category[s["label_id"]]}
                    for s in prediction.segments
                ]
                pq.update(prediction.ids, pred_segments, gt_rgb, gt_segments, image_id=image_id)
                gt_boxes, gt_cats, gt_crowd = _gt_boxes(gt_segments)
                boxes.update(
                    image_id,
                    detection["boxes"].cpu().numpy(),
                    detection["scores"].cpu().numpy(),
                    np.array(
                        [label_to_category[int(k)] for k in detection["labels"].tolist()], dtype=np.int64
                    ),
                    gt_boxes,
                    gt_cats,
                    gt_crowd,
                    *size,
                )
                if save_predictions is not None:
                    png_name = f"{Path(row['file_name']).stem}.png"
                    if png_name in written:
                        png_name = f"{image_id}_{png_name}"
                    written[png_name] = encode_panoptic_png(prediction.ids)
                    image_infos.append(
                        {
                            "id": image_id,
                            "file_name": row["file_name"],
                            "height": row["height"],
                            "width": row["width"],
                        }
                    )
                    annotations.append(
                        {
                            "image_id": image_id,
                            "file_name": png_name,
                            "segments_info": [
                                {
                                    "id": s["id"],
                                    "category_id": label_to_category[s["label_id"]],
                                    "iscrowd": 0,
                                    "bbox": s["bbox"],
                                    "area": s["area"],
                                    "score": s["score"],
                                }
                                for s in prediction.segments
                            ],
                        }
                    )
    finally:
        hook.remove()

    if save_predictions is not None:
        with atomic_directory(save_predictions, overwrite=True) as tmp:
            png_dir = tmp / f"panoptic_{split_name}"
            png_dir.mkdir()
            for name, data in written.items():
                (png_dir / name).write_bytes(data)
            json_categories = [
                {k: c[k] for k in ("id", "name", "isthing", "color") if k in c}
                | {"isthing": int(bool(c["isthing"]))}
                for c in categories
            ]
            atomic_write_json(
                tmp / f"panoptic_{split_name}.json",
                {"images": image_infos, "annotations": annotations, "categories": json_categories},
            )
        logger.info("wrote %d predictions to %s", len(annotations), save_predictions)

    summary = pq.compute()
    results: dict[str, Any] = {}
    for group, suffix in (("All", ""), ("Things", "_things"), ("Stuff", "_stuff")):
        for key in ("pq", "sq", "rq"):
            results[f"{key}{suffix}"] = float(summary[group][key])
    results.update({f"box_{k}": v for k, v in boxes.compute().items()})
    names = {int(c["id"]): c["name"] for c in categories}
    results["per_class_pq"] = {names[cat]: float(v["pq"]) for cat, v in summary["per_class"].items()}
    results["panoptic_quality"] = results_to_json(summary)
    results["num_images"] = pq.num_images
    return results, pq, boxes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint: PQ tables and box mAP.")
    parser.add_argument("--model", required=True, help="checkpoint folder (output_dir/final) or Hub id")
    parser.add_argument("--dataset", required=True, help="COCO-panoptic folder or save_to_disk folder")
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--threshold", type=float, default=None, help="segment score threshold (default: the checkpoint's)"
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--cache-dir", default=None, help="datasets cache for a COCO-panoptic folder")
    parser.add_argument(
        "--save-predictions", default=None, help="write COCO-panoptic predictions to this folder"
    )
    parser.add_argument("--json-out", default=None, help="write the metrics to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from finetune.inference import ModelLoadError, PanopticPredictor

    try:
        split, categories = load_split(args.dataset, args.split, args.cache_dir)
        predictor = PanopticPredictor.from_pretrained(
            args.model, threshold=args.threshold, device=args.device, batch_size=args.batch_size
        )
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
        f"\nbox mAP {100 * results['box_map']:.1f}  AP50 {100 * results['box_map_50']:.1f}  "
        f"AP75 {100 * results['box_map_75']:.1f}   ({results['num_images']} images, split {args.split})"
    )
    if args.json_out:
        atomic_write_json(args.json_out, results, indent=2)
        logger.info("wrote %s", args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
