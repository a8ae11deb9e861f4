"""What a checkpoint's config says about its labels: category ids, colours, stuff labels, thresholds.

The checkpoint carries what evaluation used (written by `finetune/training/export.py`), so every tool
scores and draws a model the same way: ``config.panoptic_postprocess`` (thresholds, see
`postprocess_settings`), ``config.category_ids`` (label -> dataset category id, see
`label_to_category`), ``config.label_colors`` (the dataset's category colours, see `label_color`) and
``config.stuff_label_ids`` (the labels fused into one segment per class, see `stuff_label_ids`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from dataset_scripts.coco_panoptic import CheckpointLabels, coco_panoptic_categories
from dataset_scripts.preview import palette_color
from finetune.config import DEFAULT_MASK_THRESHOLD, DEFAULT_OVERLAP_MASK_AREA_THRESHOLD, DEFAULT_THRESHOLD

logger = logging.getLogger(__name__)

POSTPROCESS_DEFAULTS: dict[str, float] = {
    "threshold": DEFAULT_THRESHOLD,
    "mask_threshold": DEFAULT_MASK_THRESHOLD,
    "overlap_mask_area_threshold": DEFAULT_OVERLAP_MASK_AREA_THRESHOLD,
}
"""Panoptic post-processing settings and their defaults (used when neither caller nor checkpoint sets one)."""


class LabelMismatchError(ValueError):
    """The model's labels do not match the dataset's categories (the message names the label)."""


def stuff_label_ids(config: Any) -> set[int]:
    """The labels to fuse into one segment per class.

    The checkpoint's ``config.stuff_label_ids`` (written by training); for a checkpoint laid out by COCO
    category id without them (`facebook/detr-resnet-50-panoptic`), its rows that are COCO-panoptic stuff
    categories.
    """
    ids = getattr(config, "stuff_label_ids", None)
    if ids is not None:
        return {int(i) for i in ids}
    labels = CheckpointLabels.from_id2label(config.id2label)
    if labels.coco_layout:
        categories = coco_panoptic_categories()
        return {row for row in labels.rows.values() if not categories[row].isthing}
    logger.warning("the checkpoint has no config.stuff_label_ids: stuff classes will not be fused")
    return set()


def postprocess_settings(
    config: Any,
    threshold: float | None = None,
    mask_threshold: float | None = None,
    overlap_mask_area_threshold: float | None = None,
) -> dict[str, float]:
    """The post-processing settings to use: the argument, else the checkpoint's, else the default.

    The checkpoint's values are ``config.panoptic_postprocess`` (the ``eval`` settings the model was
    evaluated with, saved by `finetune.training.export.save_model_folder`), so that predictions and scores made
    later match ``all_results.json``.

    Returns:
        ``{"threshold", "mask_threshold", "overlap_mask_area_threshold"}``.

    Raises:
        ValueError: a value outside [0, 1].
    """
    saved = getattr(config, "panoptic_postprocess", None) or {}
    given = {
        "threshold": threshold,
        "mask_threshold": mask_threshold,
        "overlap_mask_area_threshold": overlap_mask_area_threshold,
    }
    settings = {}
    for key, default in POSTPROCESS_DEFAULTS.items():
        value = given[key] if given[key] is not None else saved.get(key, default)
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{key} must lie in [0, 1], got {value}")
        settings[key] = value
    return settings


def label_to_category(config: Any, categories: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """Model label -> dataset category id, decided one way for evaluation, training and prediction.

    With ``config.category_ids`` (saved by training, in label order) those ids are used, and each
    label's name must be the name of that category in `categories`. Without them (a checkpoint from
    elsewhere) labels are matched to categories by name. Categories the model lacks are allowed (they
    are simply never predicted).

    Args:
        config: The model config (``id2label``, optionally ``category_ids``).
        categories: The dataset categories (dicts with ``id`` and ``name``), in any order.

    Raises:
        LabelMismatchError: a label whose saved category id is absent from `categories` or names another
            class, or (without saved ids) a label name that is no category name.
    """
    id2label = {int(k): str(v) for k, v in config.id2label.items()}
    by_id = {int(c["id"]): str(c["name"]) for c in categories}
    known = ", ".join(f"{cat_id} '{name}'" for cat_id, name in by_id.items())
    saved = getattr(config, "category_ids", None)
    if saved is not None:
        if len(saved) != len(id2label):
            raise LabelMismatchError(
                f"the model has {len(id2label)} labels but config.category_ids lists {len(saved)} ids"
            )
        mapping = {}
        for label, cat_id in enumerate(saved):
            name, cat_id = id2label[label], int(cat_id)
            if cat_id not in by_id:
                raise LabelMismatchError(
                    f"model label {label} '{name}' is category id {cat_id}, which the dataset does not have "
                    f"(dataset categories: {known})"
                )
            if by_id[cat_id] != name:
                raise LabelMismatchError(
                    f"model label {label} '{name}' is category id {cat_id}, but the dataset's category "
                    f"{cat_id} is '{by_id[cat_id]}': the model was trained on another category table"
                )
            mapping[label] = cat_id
        return mapping
    by_name = {name: cat_id for cat_id, name in by_id.items()}
    missing = [f"{label} '{name}'" for label, name in sorted(id2label.items()) if name not in by_name]
    if missing:
        raise LabelMismatchError(
            f"model label(s) {', '.join(missing)} match no dataset category by name "
            f"(dataset categories: {known})"
        )
    return {label: by_name[name] for label, name in id2label.items()}


def label_color(label_id: int, colors: Mapping[int, Sequence[int]] | None = None) -> tuple[int, int, int]:
    """The colour of a model label: its saved category colour, else the shared palette's.

    Args:
        label_id: The model label.
        colors: Label -> ``[r, g, b]`` saved in the checkpoint (`saved_label_colors`).

    The palette fallback is the converter's (`dataset_scripts.preview.palette_color`, label ``i`` =
    ``i``-th category), so ground-truth previews and prediction overlays agree.
    """
    if colors is not None and label_id in colors:
        return tuple(int(c) for c in colors[label_id])[:3]  # type: ignore[return-value]
    return palette_color(label_id)


def saved_label_colors(config: Any) -> dict[int, tuple[int, int, int]]:
    """``config.label_colors`` (a list in label order, saved by training) as {label: (r, g, b)}, or {}."""
    colors = getattr(config, "label_colors", None) or []
    return {label: tuple(int(c) for c in color)[:3] for label, color in enumerate(colors)}  # type: ignore


def category_ids(config: Any) -> dict[int, int] | None:
    """Model label -> dataset category id, when the checkpoint carries ``config.category_ids``."""
    ids = getattr(config, "category_ids", None)
    if ids is None:
        return None
    return {label: int(cat) for label, cat in enumerate(ids)}
