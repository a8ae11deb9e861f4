"""Panoptic predictions from a trained checkpoint: load once, predict batches of PIL images.

`PanopticPredictor` wraps a `DetrForSegmentation` and its `DetrImageProcessor`. It does what the
`image-segmentation` pipeline cannot: stuff classes come out as ONE segment per class
(`label_ids_to_fuse = model.config.stuff_label_ids`, saved in the checkpoint by training), the id
map is returned at each image's original size, and batches of images of different sizes give the
same result as one image at a time (the padded part of each mask is cut off before resizing).

Example::

    predictor = PanopticPredictor.from_pretrained("outputs/quickstart/final")
    [prediction] = predictor.predict([Image.open("site.jpg")])
    prediction.ids        # (H, W) int64 segment ids, 0 = void
    prediction.segments   # [{"id", "label_id", "name", "isthing", "score", "bbox", "area", "color"}, ...]

The checkpoint also carries what evaluation used (written by `finetune/training/export.py`), so every tool
scores and draws a model the same way: ``config.panoptic_postprocess`` (thresholds, see
`postprocess_settings`), ``config.category_ids`` (label -> dataset category id, see
`label_to_category`) and ``config.label_colors`` (the dataset's category colours, see `label_color`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dataset_scripts.panoptic_format import segment_stats
from dataset_scripts.preview import draw_panoptic_overlay, palette_color
from finetune.config import DEFAULT_MASK_THRESHOLD, DEFAULT_OVERLAP_MASK_AREA_THRESHOLD, DEFAULT_THRESHOLD

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A checkpoint folder or Hub id could not be loaded (the message says why and what to do)."""


class LabelMismatchError(ValueError):
    """The model's labels do not match the dataset's categories (the message names the label)."""


POSTPROCESS_DEFAULTS: dict[str, float] = {
    "threshold": DEFAULT_THRESHOLD,
    "mask_threshold": DEFAULT_MASK_THRESHOLD,
    "overlap_mask_area_threshold": DEFAULT_OVERLAP_MASK_AREA_THRESHOLD,
}
"""Panoptic post-processing settings and their defaults (used when neither caller nor checkpoint sets one)."""


@dataclass
class PanopticPrediction:
    """The panoptic segmentation of one image.

    Attributes:
        ids: ``(H, W)`` int64 segment ids at the image's original size; 0 is void.
        segments: One dict per segment id present in `ids`: ``id``, ``label_id`` (model label),
            ``category_id`` (dataset category id when the checkpoint knows it, else None),
            ``name``, ``isthing``, ``score`` (class probability; the highest of the fused queries for
            stuff), ``bbox`` ``[x, y, w, h]`` px, ``area`` px and ``color`` (the class colour, `label_color`).
    """

    ids: np.ndarray
    segments: list[dict[str, Any]] = field(default_factory=list)


def _select_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def stuff_label_ids(config: Any) -> set[int]:
    """The labels to fuse into one segment per class: the checkpoint's ``config.stuff_label_ids``."""
    ids = getattr(config, "stuff_label_ids", None)
    if ids is None:
        logger.warning("the checkpoint has no config.stuff_label_ids: stuff classes will not be fused")
        return set()
    return {int(i) for i in ids}


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


class PanopticPredictor:
    """Batched panoptic inference with stuff fusion, on GPU when there is one.

    Args:
        model: A `DetrForSegmentation` (its ``config`` gives ``id2label`` and ``stuff_label_ids``).
        image_processor: The checkpoint's `DetrImageProcessor` (resizing and normalisation).
        threshold: Minimum class probability of a query to become a segment.
        device: ``"cuda"``, ``"cpu"``...; default: CUDA when available.
        batch_size: Images per forward pass in `predict`.
        mask_threshold: Mask probability above which a pixel belongs to a query's mask.
        overlap_mask_area_threshold: A query's segment is dropped when less than this fraction of
            its mask survives the per-pixel competition with the other queries.

    Thresholds left at None take the checkpoint's evaluation settings, else the defaults
    (`postprocess_settings`).
    """

    def __init__(
        self,
        model: Any,
        image_processor: Any,
        threshold: float | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 4,
        mask_threshold: float | None = None,
        overlap_mask_area_threshold: float | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        config = model.config
        settings = postprocess_settings(config, threshold, mask_threshold, overlap_mask_area_threshold)
        self.device = _select_device(device)
        self.model = model.to(self.device).eval()
        self.image_processor = image_processor
        self.threshold = settings["threshold"]
        self.batch_size = batch_size
        self.mask_threshold = settings["mask_threshold"]
        self.overlap_mask_area_threshold = settings["overlap_mask_area_threshold"]
        self.id2label = {int(k): v for k, v in config.id2label.items()}
        self.stuff_label_ids = stuff_label_ids(config)
        self.category_ids = category_ids(config)
        saved_colors = saved_label_colors(config)
        self.label_colors = {label: label_color(label, saved_colors) for label in self.id2label}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        threshold: float | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 4,
        revision: str | None = None,
        **kwargs: Any,
    ) -> PanopticPredictor:
        """Load a checkpoint folder (``output_dir/final``) or a Hub model id.

        `threshold` (and ``mask_threshold`` / ``overlap_mask_area_threshold`` in `kwargs`) default to
        the checkpoint's evaluation settings (`postprocess_settings`).

        Raises:
            ModelLoadError: the folder lacks a piece, or the Hub id cannot be reached (offline,
                private without a token, misspelled): the message names it.
        """
        from transformers import AutoImageProcessor, DetrForSegmentation

        source = str(name_or_path)
        local = Path(source)
        if local.exists():
            if not local.is_dir():
                raise ModelLoadError(f"{local} is a file; --model wants a checkpoint folder or a Hub id")
            for needed in ("config.json", "preprocessor_config.json"):
                if not (local / needed).is_file():
                    raise ModelLoadError(f"{local} is not a checkpoint folder: {needed} is missing")
        try:
            model = DetrForSegmentation.from_pretrained(source, revision=revision)
            processor = AutoImageProcessor.from_pretrained(source, revision=revision)
        except OSError as err:  # transformers turns Hub/network/missing-file failures into OSError
            where = "local folder" if local.exists() else "Hub model id"
            hint = (
                ""
                if local.exists()
                else " (no such local folder; the Hub may be unreachable or HF_HUB_OFFLINE=1 set — "
                "pass a checkpoint folder such as outputs/quickstart/final, or log in with `hf auth login` "
                "for a private repo)"
            )
            raise ModelLoadError(f"cannot load {where} '{source}'{hint}: {err}") from err
        return cls(model, processor, threshold=threshold, device=device, batch_size=batch_size, **kwargs)

    @torch.inference_mode()
    def predict(
        self, images: Sequence[Image.Image], threshold: float | None = None
    ) -> list[PanopticPrediction]:
        """Panoptic segmentation of each image, in order.

        Args:
            images: PIL images of any sizes and modes (converted to RGB).
            threshold: Overrides the predictor's threshold for this call.

        Returns:
            One `PanopticPrediction` per image, its ``ids`` of shape ``(image.height, image.width)``.
        """
        threshold = self.threshold if threshold is None else threshold
        results: list[PanopticPrediction] = []
        for start in range(0, len(images), self.batch_size):
            batch = [image.convert("RGB") for image in images[start : start + self.batch_size]]
            results.extend(self._predict_batch(batch, threshold))
        return results

    def _predict_batch(self, images: list[Image.Image], threshold: float) -> list[PanopticPrediction]:
        inputs = self.image_processor(images=images, return_tensors="pt").to(self.device)
        outputs = self.model(pixel_values=inputs["pixel_values"], pixel_mask=inputs.get("pixel_mask"))
        padded_h, padded_w = inputs["pixel_values"].shape[-2:]
        mask_h, mask_w = outputs.pred_masks.shape[-2:]
        predictions = []
        for index, image in enumerate(images):
            # Cut the batch padding off this image's masks, so that resizing to the original size
            # maps the image (not the image + padding) onto the original pixels.
            if "pixel_mask" in inputs:
                valid = inputs["pixel_mask"][index]
                valid_h, valid_w = int(valid.any(1).sum()), int(valid.any(0).sum())
            else:
                valid_h, valid_w = padded_h, padded_w
            crop_h = min(mask_h, math.ceil(valid_h * mask_h / padded_h))
            crop_w = min(mask_w, math.ceil(valid_w * mask_w / padded_w))
            single = _SingleOutput(
                logits=outputs.logits[index : index + 1].float(),
                pred_masks=outputs.pred_masks[index : index + 1, :, :crop_h, :crop_w].float(),
            )
            [post] = self.image_processor.post_process_panoptic_segmentation(
                single,
                threshold=threshold,
                mask_threshold=self.mask_threshold,
                overlap_mask_area_threshold=self.overlap_mask_area_threshold,
                label_ids_to_fuse=self.stuff_label_ids,
                target_sizes=[(image.height, image.width)],
            )
            predictions.append(self._to_prediction(post["segmentation"], post["segments_info"]))
        return predictions

    def _to_prediction(self, segmentation: torch.Tensor, segments_info: list[dict]) -> PanopticPrediction:
        """Id map (void = 0, not -1) + one segment dict per id present (fused queries merged)."""
        ids = segmentation.to("cpu", torch.int64).numpy()
        ids[ids < 0] = 0  # transformers marks "nothing found" with -1
        stats = segment_stats(ids)
        merged: dict[int, dict[str, Any]] = {}
        for info in segments_info:
            seg_id = int(info["id"])
            if seg_id not in stats:  # lost to the competition between queries after resizing
                continue
            if seg_id in merged:  # a fused stuff class lists each of its queries: keep the best score
                merged[seg_id]["score"] = max(merged[seg_id]["score"], float(info["score"]))
                continue
            label = int(info["label_id"])
            merged[seg_id] = {
                "id": seg_id,
                "label_id": label,
                "category_id": None if self.category_ids is None else self.category_ids.get(label),
                "name": self.id2label.get(label, str(label)),
                "isthing": label not in self.stuff_label_ids,
                "score": float(info["score"]),
                "bbox": stats[seg_id].bbox,
                "area": stats[seg_id].area,
                "color": self.label_colors.get(label, label_color(label)),
            }
        return PanopticPrediction(ids=ids, segments=sorted(merged.values(), key=lambda s: s["id"]))


def render_overlay(image: Image.Image, prediction: PanopticPrediction, alpha: float = 0.5) -> Image.Image:
    """The colour overlay of a prediction: class colours, outlines, thing names + scores, legend."""
    segments = [
        seg if seg.get("color") is not None else dict(seg, color=label_color(seg["label_id"]))
        for seg in prediction.segments
    ]
    return draw_panoptic_overlay(image, prediction.ids, segments, alpha=alpha)


@dataclass
class _SingleOutput:
    """The two fields of `DetrSegmentationOutput` that panoptic post-processing reads."""

    logits: torch.Tensor
    pred_masks: torch.Tensor
