"""Inputs of the PQ folder CLI: the two COCO-panoptic JSONs, type-checked, and their images paired.

A JSON from another tool can hold anything, so every entry the evaluation reads is checked here
(with `panoptic_format`'s checks) before any worker starts: a ``null`` annotation or segment, a
string ``category_id``, a missing ``file_name`` ... each stops the run with a
`PanopticEvaluationError` whose one-line message names the JSON file, the image and the id (the
CLI turns it into exit status 2, no traceback).

Images are paired by ``image_id``, as panopticapi does, unless the prediction JSON numbers the same
file names differently (``finetune/predict.py`` without ``--gt-json`` numbers its images 1..N):
then they are paired by ``file_name``, with a warning, instead of comparing unrelated images.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any

from dataset_scripts import panoptic_format
from dataset_scripts.panoptic_format import PanopticFormatError, check_annotation, check_category, check_image
from finetune.evaluation.pq_core import PanopticEvaluationError

logger = logging.getLogger(__name__)


def load_panoptic_annotations(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """Load a COCO-panoptic JSON that has at least an ``annotations`` list.

    (Not `panoptic_format.load_panoptic_json`: a prediction JSON written by another tool may lack
    ``images`` or ``categories``, as panopticapi allows.)

    Args:
        path: The JSON file.
        what: ``"ground-truth"`` or ``"prediction"``, for messages.

    Raises:
        PanopticEvaluationError: missing, unreadable or malformed file, or no ``annotations`` list.
    """
    try:
        data = panoptic_format.load_json(path)
    except FileNotFoundError:
        raise PanopticEvaluationError(f"{what} JSON not found: {path}") from None
    except PanopticFormatError as err:  # malformed or unreadable
        raise PanopticEvaluationError(str(err)) from err
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise PanopticEvaluationError(f"{path}: not a COCO-panoptic file (no 'annotations' list)")
    return data


def _format_checked(check: Any, *args: Any) -> None:
    """Run a `panoptic_format` type check, raising this package's error type."""
    try:
        check(*args)
    except PanopticFormatError as err:
        raise PanopticEvaluationError(str(err)) from None


def check_categories(data: dict[str, Any], path: Any) -> list[dict[str, Any]]:
    """The GT ``categories``: a non-empty list of objects with an integer ``id`` and ``isthing``."""
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise PanopticEvaluationError(f"{path}: no 'categories'")
    for index, cat in enumerate(categories):
        _format_checked(check_category, cat, index, path)
    return categories


def annotations_by_image(data: dict[str, Any], path: Any) -> dict[Any, dict[str, Any]]:
    """``{image_id: annotation}`` after checking every annotation, segment and image entry.

    Raises:
        PanopticEvaluationError: a wrongly typed entry (`panoptic_format.check_annotation`), or a
            repeated image id (in ``annotations`` or in ``images``); the message names ``path``,
            the image and the id.
    """
    by_image: dict[Any, dict[str, Any]] = {}
    for index, ann in enumerate(data["annotations"]):
        _format_checked(check_annotation, ann, index, path)
        if ann["image_id"] in by_image:
            raise PanopticEvaluationError(f"{path}: duplicate annotation for image id {ann['image_id']}")
        by_image[ann["image_id"]] = ann
    images = data.get("images", [])
    if not isinstance(images, list):
        raise PanopticEvaluationError(f"{path}: 'images' is not a list")
    seen: set[Any] = set()
    for index, image in enumerate(images):
        _format_checked(check_image, image, index, path)
        if image["id"] in seen:
            raise PanopticEvaluationError(f"{path}: duplicate image id {image['id']} in 'images'")
        seen.add(image["id"])
    return by_image


def _png_name(ann: dict[str, Any]) -> str:
    return PurePosixPath(ann["file_name"]).name


def _by_name(anns: dict[Any, dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    """``{PNG name: annotation}``, or None when two annotations share a name."""
    names = {_png_name(ann): ann for ann in anns.values()}
    return names if len(names) == len(anns) else None


def pair_images(
    gt: dict[Any, dict[str, Any]], pred: dict[Any, dict[str, Any]], gt_path: Any, pred_path: Any
) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """``(GT annotation, its prediction annotation or None)`` for every GT image, in GT order.

    By ``image_id``; by ``file_name`` instead when some GT PNG name is found among the predictions
    under another image id (the ids then number other things, e.g. ``predict.py``'s 1..N).

    Raises:
        PanopticEvaluationError: the ids disagree with the names, and the names are not unique
            on one side either.
    """
    pred_names = _by_name(pred)
    any_pred_names = pred_names or {_png_name(ann): ann for ann in pred.values()}
    renumbered = [
        (image_id, _png_name(ann), any_pred_names[_png_name(ann)]["image_id"])
        for image_id, ann in gt.items()
        if _png_name(ann) in any_pred_names and any_pred_names[_png_name(ann)]["image_id"] != image_id
    ]
    if not renumbered:
        pairs = [(ann, pred.get(image_id)) for image_id, ann in gt.items()]
        unmatched = set(pred) - set(gt)
    else:
        gt_id, name, pred_id = renumbered[0]
        if pred_names is None or _by_name(gt) is None:
            raise PanopticEvaluationError(
                f"{pred_path}: image ids differ from those of {gt_path} for the same file names (e.g. "
                f"{name}: image {gt_id} in the ground truth, {pred_id} in the predictions), and the file "
                "names repeat, so the images cannot be matched by name either"
            )
        logger.warning(
            "%s numbers %d image(s) differently from %s (e.g. %s: image %s in the ground truth, %s in the "
            "predictions; finetune/predict.py without --gt-json numbers its images 1..N): "
            "images are matched by file_name",
            pred_path,
            len(renumbered),
            gt_path,
            name,
            gt_id,
            pred_id,
        )
        pairs = [(ann, pred_names.get(_png_name(ann))) for ann in gt.values()]
        gt_names = {_png_name(ann) for ann in gt.values()}
        unmatched = {ann["image_id"] for ann in pred.values() if _png_name(ann) not in gt_names}
    if unmatched:
        logger.warning(
            "%d predicted image(s) have no ground truth and are ignored, e.g. id %s",
            len(unmatched),
            next(iter(unmatched)),
        )
    return pairs


def image_label(gt_ann: dict[str, Any], pred_ann: dict[str, Any] | None) -> str:
    """How messages name a pair: ``3 (a.png)``, or ``3 (a.png; prediction image 1, b.png)``."""
    label = f"{gt_ann['image_id']} ({gt_ann['file_name']}"
    if pred_ann is not None and (
        pred_ann["image_id"] != gt_ann["image_id"] or pred_ann["file_name"] != gt_ann["file_name"]
    ):
        label += f"; prediction image {pred_ann['image_id']}, {pred_ann['file_name']}"
    return label + ")"


def check_files(
    pairs: list[tuple[dict[str, Any], dict[str, Any] | None]], gt_folder: Path, pred_folder: Path
) -> None:
    """Raise for the first pair whose GT or predicted PNG is missing (the message names it)."""
    for gt_ann, pred_ann in pairs:
        label = image_label(gt_ann, pred_ann)
        if not (gt_folder / gt_ann["file_name"]).is_file():
            raise PanopticEvaluationError(
                f"image {label}: ground-truth PNG not found: {gt_folder / gt_ann['file_name']}"
            )
        if pred_ann is not None and not (pred_folder / pred_ann["file_name"]).is_file():
            raise PanopticEvaluationError(
                f"image {label}: predicted PNG not found: {pred_folder / pred_ann['file_name']}"
            )
