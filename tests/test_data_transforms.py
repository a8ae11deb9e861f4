"""DETR's joint augmentation: masks stay on the image, boxes are the masks' tight boxes."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from transformers.image_transforms import get_size_with_aspect_ratio

from finetune.data.targets import masks_to_xyxy
from finetune.data.transforms import build_eval_transforms, build_train_transforms

COLORS = torch.tensor([[250, 10, 10], [10, 250, 10], [10, 10, 250]], dtype=torch.uint8)


def _sample(height: int = 60, width: int = 80):
    """Three segments painted in distinct pure colours, so alignment can be checked after transforms."""
    masks = torch.zeros((3, height, width), dtype=torch.uint8)
    masks[0, : height // 2] = 1  # top band
    masks[1, height // 2 :] = 1  # bottom band
    masks[2, 5:15, 4:14] = 1  # small square in the top-left corner
    masks[0, 5:15, 4:14] = 0
    image = torch.einsum("nhw,nc->chw", masks.float(), COLORS.float()).to(torch.uint8)
    target = {
        "masks": tv_tensors.Mask(masks),
        "boxes": tv_tensors.BoundingBoxes(masks_to_xyxy(masks), format="XYXY", canvas_size=(height, width)),
        "class_labels": torch.tensor([0, 1, 2]),
    }
    return tv_tensors.Image(image), target


def _check_consistent(image, target):
    masks = target["masks"]
    assert masks.dtype == torch.bool
    assert masks.shape[-2:] == image.shape[-2:]
    assert masks.flatten(1).any(dim=1).all(), "an empty mask survived"
    assert torch.equal(target["boxes"].as_subclass(torch.Tensor), masks_to_xyxy(masks))
    assert target["boxes"].canvas_size == tuple(image.shape[-2:])
    assert len(target["class_labels"]) == len(masks)
    # Pixels under a mask keep their segment's colour: the dominant channel is the mask's label.
    # Bilinear (image) and nearest (masks) differ on boundaries, so require 90% of all pixels.
    agree = sum(
        int((image[:, m].argmax(dim=0) == lab).sum())
        for m, lab in zip(masks, target["class_labels"], strict=True)
    )
    assert agree >= 0.9 * int(masks.sum()), "masks are not aligned with the image"


def test_flip_moves_mask_and_recomputes_box():
    image, target = _sample()
    flip = build_train_transforms(scales=[60], max_size=1000, hflip_prob=1.0, random_crop=False)
    out_image, out = flip(image, target)
    assert torch.equal(out_image, image.flip(-1))
    assert torch.equal(out["masks"], target["masks"].bool().flip(-1))
    # square at x in [4, 14) -> [80 - 14, 80 - 4)
    assert out["boxes"][2].tolist() == [66, 5, 76, 15]
    _check_consistent(out_image, out)


def test_crop_drops_vanished_segments_and_keeps_boxes_tight():
    vanished = 0
    transforms = build_train_transforms(
        scales=[40],
        max_size=1000,
        hflip_prob=0.5,
        random_crop=True,
        crop_resize_scales=[60],
        crop_min_size=20,
        crop_max_size=30,
    )
    for seed in range(30):
        torch.manual_seed(seed)
        out_image, out = transforms(*_sample())
        _check_consistent(out_image, out)
        vanished += len(out["class_labels"]) < 3
    assert vanished > 0, "the crop branch never removed the corner square"


@pytest.mark.parametrize(("height", "width"), [(60, 80), (80, 60), (30, 200), (100, 100)])
def test_eval_resize_obeys_shortest_and_longest_edge(height, width):
    size, max_size = 64, 150
    out_image, out = build_eval_transforms(size, max_size)(*_sample(height, width))
    out_h, out_w = out_image.shape[-2:]
    assert max(out_h, out_w) <= max_size
    if max(height, width) / min(height, width) * size <= max_size:
        assert min(out_h, out_w) == size
    else:  # capped by the longest edge
        assert max(out_h, out_w) >= max_size - 1
    assert (out_h, out_w) == get_size_with_aspect_ratio((height, width), size, max_size)
    assert out["masks"].shape[-2:] == (out_h, out_w)


def test_train_resize_sizes_and_alignment():
    scales, max_size = [48, 56, 64], 100
    transforms = build_train_transforms(
        scales=scales, max_size=max_size, crop_resize_scales=[50], crop_min_size=30, crop_max_size=45
    )
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out = transforms(*_sample(60, 80))
        out_h, out_w = out_image.shape[-2:]
        assert max(out_h, out_w) <= max_size
        assert min(out_h, out_w) in scales or max(out_h, out_w) >= max_size - 1
        seen.add(min(out_h, out_w))
        _check_consistent(out_image, out)
    assert len(seen) > 1, "multi-scale resize always picked the same size"


def test_empty_sample_passes_through():
    image, target = _sample()
    empty = {
        "masks": tv_tensors.Mask(torch.zeros((0, 60, 80), dtype=torch.uint8)),
        "boxes": tv_tensors.BoundingBoxes(torch.zeros((0, 4)), format="XYXY", canvas_size=(60, 80)),
        "class_labels": torch.zeros((0,), dtype=torch.int64),
    }
    torch.manual_seed(0)
    for transforms in (
        build_train_transforms(scales=[40], crop_min_size=20, crop_max_size=30),
        build_eval_transforms(40),
    ):
        out_image, out = transforms(image, empty)
        assert out["masks"].shape == (0, *out_image.shape[-2:])
        assert out["boxes"].shape == (0, 4) and out["class_labels"].shape == (0,)
