"""Panoptic predictions from a trained checkpoint: load once, predict batches of PIL images.

`PanopticPredictor` wraps a `DetrForSegmentation` and its `DetrImageProcessor` around the inference core
(`finetune.inference.core.predict_batch`: the mask head runs only on the queries that can become segments).
It does what the `image-segmentation` pipeline cannot: stuff classes come out as ONE segment per class
(`label_ids_to_fuse = model.config.stuff_label_ids`, saved in the checkpoint by training), the id map is
returned at each image's original size, and batches of images of different sizes give the same result as
one image at a time (the padded part of each mask is cut off before resizing).

Example::

    predictor = PanopticPredictor.from_pretrained("outputs/quickstart/final")
    [prediction] = predictor.predict([Image.open("site.jpg")])
    prediction.ids        # (H, W) int64 segment ids, 0 = void
    prediction.segments   # [{"id", "label_id", "name", "isthing", "score", "bbox", "area", "color"}, ...]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from dataset_scripts.coco_panoptic import CheckpointLabels
from dataset_scripts.panoptic_format import segment_stats
from dataset_scripts.preview import draw_panoptic_overlay
from finetune.inference.core import BatchOutput, PanopticPrediction, PostProcessing, predict_images
from finetune.inference.metadata import (
    category_ids,
    label_color,
    postprocess_settings,
    saved_label_colors,
    stuff_label_ids,
)
from finetune.modeling.loading import ModelUnavailableError, load_checkpoint

# The command-line options that build a predictor live in `finetune.predictor_options`, which imports this
# module lazily; importing them here would make the two modules import each other.
__all__ = ["ModelLoadError", "PanopticPredictor", "render_overlay"]


class ModelLoadError(RuntimeError):
    """A checkpoint folder or Hub id could not be loaded (the message says why and what to do)."""


def _select_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class PanopticPredictor:
    """Batched panoptic inference with stuff fusion, on GPU when there is one.

    Args:
        model: A `DetrForSegmentation` (its ``config`` gives ``id2label`` and ``stuff_label_ids``), or an ONNX
            export on ONNX Runtime (`finetune.export.runtime.OnnxPanopticModel`, same ``config``): both go
            through the same inference core and post-processing.
        image_processor: The checkpoint's `DetrImageProcessor` (resizing and normalisation).
        threshold: Minimum class probability of a query to become a segment.
        device: ``"cuda"``, ``"cpu"``...; default: CUDA when available. For an ONNX export, the device its
            sessions were created for.
        batch_size: Images per forward pass in `predict`.
        mask_threshold: Mask probability above which a pixel belongs to a query's mask.
        overlap_mask_area_threshold: A query's segment is dropped when less than this fraction of
            its mask survives the per-pixel competition with the other queries.
        full_forward: Run the mask head on every query (transformers' forward), for comparison; the
            result is the same, only slower.

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
        full_forward: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        config = model.config
        settings = postprocess_settings(config, threshold, mask_threshold, overlap_mask_area_threshold)
        if isinstance(model, torch.nn.Module):
            self.device = _select_device(device)
            self.model = model.to(self.device).eval()
        else:  # an ONNX export on ONNX Runtime (`finetune.export.runtime`): its sessions chose the device
            if full_forward:
                raise ValueError("--full-forward needs a PyTorch checkpoint: an ONNX export has no full forward")
            cuda = "CUDAExecutionProvider" in getattr(model, "providers", ())
            self.device = torch.device("cuda" if cuda else "cpu")
            self.model = model
        self.image_processor = image_processor
        self.batch_size = batch_size
        self.full_forward = full_forward
        # COCO-panoptic names where the checkpoint has placeholders (`LABEL_199` of the Hub checkpoint)
        self.id2label = CheckpointLabels.from_id2label(config.id2label).names
        self.stuff_label_ids = stuff_label_ids(config)
        self.postprocessing = PostProcessing(**settings, label_ids_to_fuse=frozenset(self.stuff_label_ids))
        self.category_ids = category_ids(config)
        saved_colors = saved_label_colors(config)
        self.label_colors = {label: label_color(label, saved_colors) for label in self.id2label}

    @property
    def threshold(self) -> float:
        """The default minimum class probability of a segment."""
        return self.postprocessing.threshold

    @property
    def mask_threshold(self) -> float:
        return self.postprocessing.mask_threshold

    @property
    def overlap_mask_area_threshold(self) -> float:
        return self.postprocessing.overlap_mask_area_threshold

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
        """Load a checkpoint folder (``output_dir/final``), a Hub model id (`load_checkpoint`), or an ONNX
        export folder (``detr-panoptic-export``; run on ONNX Runtime, CUDA provider when available).

        `threshold` (and ``mask_threshold`` / ``overlap_mask_area_threshold`` / ``full_forward`` in
        `kwargs`) default to the checkpoint's evaluation settings (`postprocess_settings`).

        Raises:
            ModelLoadError: the folder lacks a piece, the Hub id cannot be reached (offline, private
                without a token, misspelled), or onnxruntime is missing for an export: the message says so.
        """
        source = str(name_or_path)
        from finetune.export.runtime import is_onnx_export

        if is_onnx_export(source):
            return cls._from_onnx_export(source, threshold=threshold, device=device, batch_size=batch_size, **kwargs)
        try:
            model, processor, _ = load_checkpoint(source, revision=revision, with_processor=True)
        except ModelUnavailableError as err:
            raise ModelLoadError(
                f"{err}. Pass a checkpoint folder such as outputs/quickstart/final, or log in with "
                "`hf auth login` for a private Hub repo"
            ) from err
        except OSError as err:  # a local path that is not a (readable) checkpoint folder
            raise ModelLoadError(f"cannot load the checkpoint: {err}") from err
        return cls(model, processor, threshold=threshold, device=device, batch_size=batch_size, **kwargs)

    @classmethod
    def _from_onnx_export(cls, folder: str, **kwargs: Any) -> PanopticPredictor:
        from transformers import AutoImageProcessor

        from finetune.export.runtime import ExportFolderError, OnnxPanopticModel

        try:
            model = OnnxPanopticModel(folder, device=kwargs.pop("device", None))
            processor = AutoImageProcessor.from_pretrained(folder)
        except (ExportFolderError, ImportError, OSError) as err:
            raise ModelLoadError(f"cannot load the ONNX export: {err}") from err
        return cls(model, processor, **kwargs)

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
        results: list[PanopticPrediction] = []
        for start in range(0, len(images), self.batch_size):
            results.extend(self.predict_batch(images[start : start + self.batch_size], threshold).predictions)
        return results

    def predict_batch(self, images: Sequence[Image.Image], threshold: float | None = None) -> BatchOutput:
        """One forward pass over `images` (however many): predictions plus every query's logits and boxes.

        Box mAP (`finetune.evaluate`) ranks all queries' boxes, from the same forward pass.
        """
        post = self.postprocessing if threshold is None else replace(self.postprocessing, threshold=threshold)
        images = [image.convert("RGB") for image in images]
        output = predict_images(
            self.model, self.image_processor, images, post, full_forward=self.full_forward
        )
        output.predictions = [self._describe(prediction) for prediction in output.predictions]
        return output

    def _describe(self, prediction: PanopticPrediction) -> PanopticPrediction:
        """Add names, dataset category ids, thing/stuff, colours, boxes and areas to the core's segments."""
        stats = segment_stats(prediction.ids)
        segments = []
        for seg in prediction.segments:
            if seg["id"] not in stats:
                continue
            label = seg["label_id"]
            segments.append(
                {
                    "id": seg["id"],
                    "label_id": label,
                    "category_id": None if self.category_ids is None else self.category_ids.get(label),
                    "name": self.id2label.get(label, str(label)),
                    "isthing": label not in self.stuff_label_ids,
                    "score": seg["score"],
                    "bbox": stats[seg["id"]].bbox,
                    "area": stats[seg["id"]].area,
                    "color": self.label_colors.get(label, label_color(label)),
                }
            )
        return PanopticPrediction(ids=prediction.ids, segments=segments)


def render_overlay(image: Image.Image, prediction: PanopticPrediction, alpha: float = 0.5) -> Image.Image:
    """The colour overlay of a prediction: class colours, outlines, thing names + scores, legend."""
    segments = [
        seg if seg.get("color") is not None else dict(seg, color=label_color(seg["label_id"]))
        for seg in prediction.segments
    ]
    return draw_panoptic_overlay(image, prediction.ids, segments, alpha=alpha)
