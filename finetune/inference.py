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
    prediction.segments   # [{"id", "label_id", "name", "isthing", "score", "bbox", "area"}, ...]
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dataset_scripts.panoptic_format import segment_stats
from dataset_scripts.preview import draw_panoptic_overlay, fallback_color
from finetune.config import DEFAULT_MASK_THRESHOLD, DEFAULT_OVERLAP_MASK_AREA_THRESHOLD, DEFAULT_THRESHOLD

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A checkpoint folder or Hub id could not be loaded (the message says why and what to do)."""


@dataclass
class PanopticPrediction:
    """The panoptic segmentation of one image.

    Attributes:
        ids: ``(H, W)`` int64 segment ids at the image's original size; 0 is void.
        segments: One dict per segment id present in `ids`: ``id``, ``label_id`` (model label),
            ``category_id`` (dataset category id when the checkpoint knows it, else None),
            ``name``, ``isthing``, ``score`` (class probability; the highest of the fused queries for
            stuff), ``bbox`` ``[x, y, w, h]`` px and ``area`` px.
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
    """

    def __init__(
        self,
        model: Any,
        image_processor: Any,
        threshold: float = DEFAULT_THRESHOLD,
        device: str | torch.device | None = None,
        batch_size: int = 4,
        mask_threshold: float = DEFAULT_MASK_THRESHOLD,
        overlap_mask_area_threshold: float = DEFAULT_OVERLAP_MASK_AREA_THRESHOLD,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = _select_device(device)
        self.model = model.to(self.device).eval()
        self.image_processor = image_processor
        self.threshold = threshold
        self.batch_size = batch_size
        self.mask_threshold = mask_threshold
        self.overlap_mask_area_threshold = overlap_mask_area_threshold
        config = model.config
        self.id2label = {int(k): v for k, v in config.id2label.items()}
        self.stuff_label_ids = stuff_label_ids(config)
        self.category_ids = category_ids(config)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        threshold: float = DEFAULT_THRESHOLD,
        device: str | torch.device | None = None,
        batch_size: int = 4,
        revision: str | None = None,
        **kwargs: Any,
    ) -> PanopticPredictor:
        """Load a checkpoint folder (``output_dir/final``) or a Hub model id.

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
            }
        return PanopticPrediction(ids=ids, segments=sorted(merged.values(), key=lambda s: s["id"]))


def label_color(label_id: int) -> tuple[int, int, int]:
    """The overlay colour of a model label (deterministic, the same in every picture)."""
    return fallback_color(label_id + 1)


def render_overlay(image: Image.Image, prediction: PanopticPrediction, alpha: float = 0.5) -> Image.Image:
    """The colour overlay of a prediction: class colours, outlines, thing names + scores, legend."""
    segments = [dict(seg, color=label_color(seg["label_id"])) for seg in prediction.segments]
    return draw_panoptic_overlay(image, prediction.ids, segments, alpha=alpha)


@dataclass
class _SingleOutput:
    """The two fields of `DetrSegmentationOutput` that panoptic post-processing reads."""

    logits: torch.Tensor
    pred_masks: torch.Tensor
