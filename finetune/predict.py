"""Predict panoptic segmentations of images with a trained checkpoint; write COCO-panoptic + overlays.

    python finetune/predict.py photos/ more/*.jpg one.png --model outputs/quickstart/final --output-dir preds

For every image that can be read:
  * ``OUTPUT_DIR/panoptic_predictions/<stem>.png``: the segment-id PNG (id = R + 256 G + 256^2 B),
  * an entry in ``OUTPUT_DIR/panoptic_predictions.json`` (COCO-panoptic: images, annotations with
    segments_info, categories from the model config), so that
    ``python -m finetune.evaluation.panoptic_quality --gt-json ... --pred-json OUT/panoptic_predictions.json``
    can score it,
  * ``OUTPUT_DIR/overlays/<stem>.png``: the photo with class colours, outlines, names and a legend.

Image and category ids: with ``--gt-json`` (the dataset's panoptic JSON) they are taken from it
(images matched by file name, so two inputs of the same name in different folders are an error;
categories by `finetune.inference.label_to_category`: the checkpoint's ``config.category_ids``,
checked against the category names, else by name), so the predictions are scored against that
ground truth directly; without it, images are numbered 1..N in input order and category ids come
from ``config.category_ids`` when the checkpoint has them, else label id + 1. Category colours are
the checkpoint's (the dataset's colours), else the converter's palette.

``--threshold`` (and the mask thresholds) default to the checkpoint's evaluation settings. The mask
head runs only on the queries above the threshold (`finetune.inference.core`); ``--full-forward``
runs it on every query, as transformers does, for comparison (same output, slower).

Output names are the input file stems, made unique (``x/a.jpg``, ``y/a.jpg``, ``a-2.jpg`` ->
``a``, ``a-2``, ``a-2-2``; compared case-insensitively), so no prediction overwrites another.

Unreadable or corrupt images are reported (file name and reason) and skipped. Exit status: 0 when at
least one image was processed, 1 when none could be (nothing found, or every file unreadable),
2 for a usage error (bad arguments, model that cannot be loaded).
Every file is written atomically (temporary file + rename), the JSON last.
"""

from __future__ import annotations

import argparse
import glob
import io
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:  # run as a file (`python finetune/predict.py`), this needs the project installed: one line says so
    import finetune  # noqa: F401
except ModuleNotFoundError as missing:
    print(f"{sys.argv[0]}: {missing}: install detr-panoptic with `pip install -e .` from the repository root", file=sys.stderr)
    raise SystemExit(2) from None

from PIL import Image

from dataset_scripts.atomic_io import atomic_write_bytes, atomic_write_json
from dataset_scripts.cli_options import add_option, make_parser
from dataset_scripts.cvat.records import ConversionError
from dataset_scripts.image_io import load_upright_rgb
from dataset_scripts.panoptic_format import load_json, write_panoptic_png
from finetune.predictor_options import add_predictor_arguments, predictor_from_args

if TYPE_CHECKING:  # torch-backed: imported where used, so that `--help` stays fast
    from finetune.inference import PanopticPrediction, PanopticPredictor

logger = logging.getLogger("predict")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
PREDICTIONS_JSON = "panoptic_predictions.json"
PREDICTIONS_DIR = "panoptic_predictions"
OVERLAYS_DIR = "overlays"


@dataclass
class PredictSummary:
    """What a run did: images processed, images skipped (path, reason), where the JSON and overlays are."""

    processed: int
    skipped: list[tuple[str, str]]
    json_path: Path
    overlays_dir: Path | None = None


def collect_images(inputs: Iterable[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (recursively, image suffixes only) and globs into image paths.

    Returns:
        (paths in a stable order without duplicates, [(input, reason)] for inputs matching nothing).
    """
    paths: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        if not found:
            problems.append((item, "no such file, or no image in that folder / glob"))
        paths.extend(found)
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    return unique, problems


def output_stems(paths: Sequence[Path]) -> list[str]:
    """A unique output name per image: the file stem, suffixed ``-2``, ``-3``... on collisions.

    Unique whatever the inputs: a suffixed name that another input already has (``x/a.jpg``, ``y/a.jpg``,
    ``a-2.jpg``) is skipped, and names are compared case-insensitively (``A.jpg`` and ``a.png`` would
    overwrite each other on macOS and Windows).
    """
    taken: set[str] = set()
    stems = []
    for path in paths:
        stem, count = path.stem, 1
        while stem.casefold() in taken:
            count += 1
            stem = f"{path.stem}-{count}"
        taken.add(stem.casefold())
        stems.append(stem)
    return stems


def model_categories(predictor: PanopticPredictor, gt_categories: list[dict] | None) -> list[dict[str, Any]]:
    """COCO categories of the model's labels (id, name, isthing 0/1, color, supercategory).

    Raises:
        LabelMismatchError: with `gt_categories`, the model's labels do not match them.
    """
    from finetune.inference import label_to_category

    to_gt = label_to_category(predictor.model.config, gt_categories) if gt_categories is not None else None
    categories = []
    for label, name in sorted(predictor.id2label.items()):
        if to_gt is not None:
            cat_id = to_gt[label]
        elif predictor.category_ids is not None:
            cat_id = predictor.category_ids[label]
        else:
            cat_id = label + 1
        isthing = label not in predictor.stuff_label_ids
        categories.append(
            {
                "id": cat_id,
                "name": name,
                "isthing": int(isthing),
                "color": list(predictor.label_colors[label]),
                "supercategory": "thing" if isthing else "stuff",
            }
        )
    return categories


def check_unique_gt_names(paths: Sequence[Path], gt_image_ids: dict[str, Any], gt_json: Any) -> None:
    """Images are matched to ``--gt-json`` by file name: two inputs of one such name would share an id.

    Raises:
        ValueError: naming both paths.
    """
    first: dict[str, Path] = {}
    for path in paths:
        if path.name not in gt_image_ids:
            continue
        if path.name in first:
            raise ValueError(
                f"{first[path.name]} and {path} are both named '{path.name}': --gt-json {gt_json} matches "
                "images by file name, so they would get the same image id; predict them in separate runs"
            )
        first[path.name] = path


def prediction_annotation(
    prediction: PanopticPrediction, image_id: Any, png_name: str, to_category: dict[int, int]
) -> dict[str, Any]:
    """The COCO-panoptic annotation of one prediction (segment ids as in the PNG)."""
    return {
        "image_id": image_id,
        "file_name": png_name,
        "segments_info": [
            {
                "id": seg["id"],
                "category_id": to_category[seg["label_id"]],
                "iscrowd": 0,
                "bbox": seg["bbox"],
                "area": seg["area"],
                "score": round(seg["score"], 6),
            }
            for seg in prediction.segments
        ],
    }


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _image_id(path: Path, gt_image_ids: dict[str, Any] | None, gt_json: Any, done: int) -> Any:
    """The GT's id of the image of that name; 1..N without a GT; after the GT's ids when it lacks it."""
    if gt_image_ids is None:
        return done + 1
    if path.name not in gt_image_ids:
        logger.warning("%s is not an image of %s: numbered after them", path.name, gt_json)
    return gt_image_ids.get(path.name, max(gt_image_ids.values(), default=0) + done + 1)


def predict_images(
    paths: Sequence[Path],
    predictor: PanopticPredictor,
    out_dir: str | Path,
    gt_json: str | Path | None = None,
    overlays: bool = True,
    progress: bool = True,
) -> PredictSummary:
    """Predict every image, writing PNGs, overlays and the COCO-panoptic JSON under `out_dir`.

    Images that cannot be decoded are logged and skipped. Batches follow ``predictor.batch_size``.
    """
    from tqdm.auto import tqdm

    from finetune.inference import render_overlay

    out_dir = Path(out_dir)
    gt = load_json(gt_json) if gt_json is not None else None
    categories = model_categories(predictor, gt["categories"] if gt else None)
    to_category = {
        label: cat["id"] for label, cat in zip(sorted(predictor.id2label), categories, strict=True)
    }
    gt_image_ids = {Path(img["file_name"]).name: img["id"] for img in gt["images"]} if gt else {}
    check_unique_gt_names(paths, gt_image_ids, gt_json)

    skipped: list[tuple[str, str]] = []
    images_json: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    stems = output_stems(paths)
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(paths), predictor.batch_size):
        batch: list[tuple[Path, str, Image.Image]] = []
        for path, stem in zip(paths[start : start + predictor.batch_size], stems[start:], strict=False):
            try:
                image, _ = load_upright_rgb(path)
            except ConversionError as err:
                logger.error("skipped %s: %s", path, err)
                skipped.append((str(path), str(err)))
                bar.update(1)
                continue
            batch.append((path, stem, image))
        if not batch:
            continue
        predictions = predictor.predict([image for _, _, image in batch])
        for (path, stem, image), prediction in zip(batch, predictions, strict=True):
            image_id = _image_id(path, gt_image_ids if gt else None, gt_json, len(images_json))
            png_name = f"{stem}.png"
            write_panoptic_png(out_dir / PREDICTIONS_DIR / png_name, prediction.ids)
            if overlays:
                atomic_write_bytes(
                    out_dir / OVERLAYS_DIR / png_name, _png_bytes(render_overlay(image, prediction))
                )
            images_json.append(
                {"id": image_id, "file_name": path.name, "width": image.width, "height": image.height}
            )
            annotations.append(prediction_annotation(prediction, image_id, png_name, to_category))
            bar.update(1)
    bar.close()

    json_path = out_dir / PREDICTIONS_JSON
    if annotations:
        atomic_write_json(
            json_path,
            {
                "info": {
                    "description": "panoptic predictions (finetune/predict.py)",
                    "threshold": predictor.threshold,
                },
                "images": images_json,
                "annotations": annotations,
                "categories": categories,
            },
        )
    return PredictSummary(
        processed=len(annotations),
        skipped=skipped,
        json_path=json_path,
        overlays_dir=out_dir / OVERLAYS_DIR if overlays and annotations else None,
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``detr-panoptic-predict``."""
    parser = make_parser(
        "Panoptic predictions (COCO-panoptic PNG + JSON, colour overlays) for images.",
        epilog="Exit status: 0 if at least one image was processed, 1 if none could be, 2 on a usage error.",
    )
    parser.add_argument(
        "images", nargs="+", help="image files, folders (searched recursively) or glob patterns"
    )
    add_predictor_arguments(parser)
    add_option(parser, "output_dir", aliases=("--out",), required=True, help="output folder")
    parser.add_argument(
        "--gt-json", default=None, metavar="FILE", help="dataset panoptic JSON giving image and category ids"
    )
    parser.add_argument("--no-overlays", action="store_true", help="write only the PNGs and the JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _log_summary(summary: PredictSummary, device: Any) -> None:
    logger.info(
        "%d image(s) processed on %s, %d skipped", summary.processed, device, len(summary.skipped)
    )
    for path, reason in summary.skipped:
        logger.info("  skipped %s (%s)", path, reason)
    if summary.processed:
        logger.info("predictions (COCO-panoptic JSON): %s", summary.json_path)
    if summary.overlays_dir is not None:
        logger.info("overlays (PNG, one per image): %s", summary.overlays_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``detr-panoptic-predict`` command; returns the exit status (0, 1 nothing processed, 2 bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths, problems = collect_images(args.images)
    for item, reason in problems:
        logger.error("%s: %s", item, reason)
    if not paths:
        logger.error("no image to process")
        return 1
    from finetune.inference import ModelLoadError

    try:
        predictor = predictor_from_args(args)
        summary = predict_images(
            paths,
            predictor,
            args.output_dir,
            gt_json=args.gt_json,
            overlays=not args.no_overlays,
            progress=not args.quiet,
        )
    except (ModelLoadError, ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    _log_summary(summary, predictor.device)
    return 0 if summary.processed else 1


if __name__ == "__main__":
    sys.exit(main())
