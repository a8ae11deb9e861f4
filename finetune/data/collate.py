"""Batch ``(image, target)`` samples into the inputs and labels of ``DetrForSegmentation``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.ops import box_convert
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


class PanopticCollator:
    """Normalise, pad and batch samples from `finetune.data.dataset.PanopticTrainingDataset`.

    Consistent with ``DetrImageProcessor(format="coco_panoptic")``: the uint8 image is normalised
    with ``(x / 255 - mean) / std`` (computed as the processor does, fused), then zero-padded at the
    bottom/right to the largest height and width of the batch.

    Boxes are normalised cxcywh relative to each image's *unpadded* size, as in the original DETR
    (facebookresearch/detr#286): DETR's positional encodings and attention ignore the padding, so
    its box predictions are relative to the visible image. (``DetrImageProcessor`` in transformers
    >= 4.37 instead rescales boxes to the padded size when it pads a batch of images of different
    sizes; for a single image, or images of one size, both agree.)

    Args:
        image_mean: Per-channel mean (RGB, in [0, 1]); ImageNet's by default, like the processor.
        image_std: Per-channel std.
        mask_dtype: dtype of the padded target masks: bool by default, 1 byte per pixel (float32 would be 4
            through the worker IPC, pinning and the host-to-device copy of every batch); the mask loss
            (transformers' `ImageLoss.loss_masks`) converts them to the prediction's dtype on the device.

    Returns (from ``__call__``):
        ``pixel_values`` ``(B, 3, Hp, Wp)`` float32, ``pixel_mask`` ``(B, Hp, Wp)`` int64 (1 = image,
        0 = padding) and ``labels``: one dict per image with ``class_labels`` ``(N,)`` int64,
        ``boxes`` ``(N, 4)`` float32 normalised cxcywh, ``masks`` ``(N, Hp, Wp)`` ``mask_dtype`` (zero/False in the
        padding), ``image_id`` ``(1,)``, ``orig_size`` ``(2,)`` and ``size`` ``(2,)`` (unpadded
        ``height, width`` after the transforms) int64.
    """

    def __init__(
        self,
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        mask_dtype: torch.dtype = torch.bool,
    ) -> None:
        # Same fused arithmetic as the processor's rescale_and_normalize: (x - 255 mean) / (255 std).
        self.mean = torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1) * 255.0
        self.std = torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1) * 255.0
        self.mask_dtype = mask_dtype

    def __call__(self, samples: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        heights = [image.shape[-2] for image, _ in samples]
        widths = [image.shape[-1] for image, _ in samples]
        pad_h, pad_w = max(heights), max(widths)
        batch = len(samples)

        pixel_values = torch.zeros((batch, 3, pad_h, pad_w), dtype=torch.float32)
        pixel_mask = torch.zeros((batch, pad_h, pad_w), dtype=torch.int64)
        labels = []
        for i, (image, target) in enumerate(samples):
            height, width = image.shape[-2:]
            pixel_values[i, :, :height, :width] = (image.to(torch.float32) - self.mean) / self.std
            pixel_mask[i, :height, :width] = 1

            masks = target["masks"]
            padded_masks = torch.zeros((masks.shape[0], pad_h, pad_w), dtype=self.mask_dtype)
            padded_masks[:, :height, :width] = masks
            scale = torch.tensor([width, height, width, height], dtype=torch.float32)
            boxes = box_convert(target["boxes"].to(torch.float32), "xyxy", "cxcywh") / scale
            labels.append(
                {
                    "class_labels": target["class_labels"].to(torch.int64),
                    "boxes": boxes.reshape(-1, 4),
                    "masks": padded_masks,
                    "image_id": target["image_id"],
                    "orig_size": target["orig_size"],
                    "size": target["size"],
                }
            )
        return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "labels": labels}
