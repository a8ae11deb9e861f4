"""DETR's joint augmentation of image, masks and boxes with torchvision.transforms.v2.

A sample is ``(image, target)`` with ``image`` a ``tv_tensors.Image`` ``(3, H, W)`` uint8 and
``target`` a dict holding ``masks`` (``tv_tensors.Mask`` ``(N, H, W)``), ``boxes``
(``tv_tensors.BoundingBoxes`` ``(N, 4)`` XYXY) and ``class_labels`` (``(N,)`` int64). Every
geometric transform moves all three together. The last two steps recompute the boxes from the
transformed masks (exact after a crop, where a transformed box would only be clipped) and drop
the segments whose mask became empty.

Resizing uses the size rule and the interpolations of ``DetrImageProcessor``
(``transformers.image_transforms.get_size_with_aspect_ratio``; bilinear + antialias on the uint8
image, nearest-exact on masks), so that the eval transforms followed by
`finetune.data.collate.PanopticCollator` give the processor's ``pixel_values`` for the same image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from transformers.image_transforms import get_size_with_aspect_ratio

from finetune.data.targets import masks_to_xyxy

# DETR's training scales (facebookresearch/detr datasets/coco.py).
DETR_SCALES = list(range(480, 801, 32))
DETR_MAX_SIZE = 1333
DETR_CROP_RESIZE_SCALES = [400, 500, 600]


def _spatial_size(flat_inputs: list[Any]) -> tuple[int, int]:
    for inpt in flat_inputs:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            height, width = F.get_size(inpt)
            return height, width
    raise TypeError("the sample holds no tv_tensors.Image or tv_tensors.Mask to size the transform on")


class RandomShortestEdgeResize(v2.Transform):
    """Resize so the shortest edge is a size drawn from ``sizes``, the longest at most ``max_size``.

    The output size follows ``DetrImageProcessor`` exactly (which differs from torchvision's
    ``RandomShortestSize`` by rounding). Masks use nearest-exact sampling (pixel centres), as the
    processor does; boxes are scaled.
    """

    def __init__(self, sizes: Sequence[int], max_size: int | None = DETR_MAX_SIZE) -> None:
        super().__init__()
        if not sizes:
            raise ValueError("RandomShortestEdgeResize needs at least one size")
        self.sizes = [int(s) for s in sizes]
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        size = self.sizes[int(torch.randint(len(self.sizes), ()))]
        return {"size": get_size_with_aspect_ratio(_spatial_size(flat_inputs), size, self.max_size)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            interpolation = v2.InterpolationMode.NEAREST_EXACT
        else:
            interpolation = v2.InterpolationMode.BILINEAR
        return self._call_kernel(
            F.resize, inpt, size=list(params["size"]), interpolation=interpolation, antialias=True
        )


class RandomSizeCrop(v2.Transform):
    """Crop a random window whose height and width are drawn from ``[min_size, max_size]``.

    DETR's ``RandomSizeCrop``: each side is uniform in ``[min_size, min(side, max_size)]``
    (clamped to the image for images smaller than ``min_size``), the position uniform.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if min_size < 1 or max_size < min_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
        self.min_size = min_size
        self.max_size = max_size

    def _side(self, length: int) -> int:
        high = min(length, self.max_size)
        low = min(self.min_size, high)
        return int(torch.randint(low, high + 1, ()))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _spatial_size(flat_inputs)
        crop_h, crop_w = self._side(height), self._side(width)
        top = int(torch.randint(height - crop_h + 1, ()))
        left = int(torch.randint(width - crop_w + 1, ()))
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class BoxesFromMasks(v2.Transform):
    """Replace every ``BoundingBoxes`` by the tight pixel-edge XYXY boxes of the sample's masks.

    Segments whose mask is empty get a zero-size box, which `v2.SanitizeBoundingBoxes` then drops
    together with their mask and label.
    """

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        image, target = sample
        masks = target["masks"]
        boxes = tv_tensors.BoundingBoxes(
            masks_to_xyxy(masks),
            format=tv_tensors.BoundingBoxFormat.XYXY,
            canvas_size=tuple(masks.shape[-2:]),
        )
        return image, {**target, "boxes": boxes}


def class_labels_getter(sample: Any) -> torch.Tensor:
    """`v2.SanitizeBoundingBoxes` hook: the labels filtered along with the boxes (picklable)."""
    return sample[1]["class_labels"]


class MasksToBool(v2.Transform):
    """Store masks as bool (transforms run on uint8 masks, whose resize is much faster)."""

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        image, target = sample
        masks = target["masks"].as_subclass(torch.Tensor)
        if masks.dtype == torch.uint8:  # 0/1 values: reinterpret instead of comparing
            masks = masks.view(torch.bool)
        return image, {**target, "masks": tv_tensors.Mask(masks.bool())}


def _finalise() -> list[v2.Transform]:
    return [BoxesFromMasks(), v2.SanitizeBoundingBoxes(labels_getter=class_labels_getter), MasksToBool()]


def build_train_transforms(
    scales: Sequence[int] = DETR_SCALES,
    max_size: int = DETR_MAX_SIZE,
    hflip_prob: float = 0.5,
    random_crop: bool = True,
    crop_resize_scales: Sequence[int] = DETR_CROP_RESIZE_SCALES,
    crop_min_size: int = 384,
    crop_max_size: int = 600,
) -> v2.Compose:
    """DETR's training augmentation.

    Horizontal flip (``hflip_prob``), then either a multi-scale resize (shortest edge drawn from
    ``scales``, longest edge at most ``max_size``) or, with probability 0.5 when ``random_crop``,
    the random-resized-crop branch: resize the shortest edge to one of ``crop_resize_scales``,
    crop a random window with sides in ``[crop_min_size, crop_max_size]``, then the multi-scale
    resize. Finally boxes are recomputed from the masks and emptied segments dropped.

    Returns:
        A callable ``(image, target) -> (image, target)`` on tv_tensors (see module docstring).
    """
    multi_scale = RandomShortestEdgeResize(scales, max_size)
    steps: list[v2.Transform] = [v2.RandomHorizontalFlip(p=hflip_prob)]
    if random_crop:
        crop_branch = v2.Compose(
            [
                RandomShortestEdgeResize(crop_resize_scales, None),
                RandomSizeCrop(crop_min_size, crop_max_size),
                RandomShortestEdgeResize(scales, max_size),
            ]
        )
        steps.append(v2.RandomChoice([multi_scale, crop_branch], p=[0.5, 0.5]))
    else:
        steps.append(multi_scale)
    return v2.Compose(steps + _finalise())


def build_eval_transforms(size: int = 800, max_size: int = DETR_MAX_SIZE) -> v2.Compose:
    """Deterministic resize to shortest edge ``size`` (longest at most ``max_size``), as the processor."""
    return v2.Compose([RandomShortestEdgeResize([size], max_size), *_finalise()])
