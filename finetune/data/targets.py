"""Turn one COCO-panoptic annotation (segment-id map + ``segments_info``) into DETR targets.

A target holds one binary mask, one contiguous class label and one tight box per segment that
the model should predict. Crowd segments and void pixels (id 0) are never targets: like the
original DETR, their pixels are simply left out of every mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from dataset_scripts.panoptic_format import VOID_ID


class TargetError(ValueError):
    """An annotation cannot be turned into a training target (the message names image and segment)."""


def masks_to_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """Tight pixel-edge boxes of binary masks.

    COCO convention: a box spans whole pixels, so a single pixel at column x has
    ``x0 = x, x1 = x + 1``. Empty masks get the degenerate box ``(0, 0, 0, 0)``.

    Args:
        masks: ``(N, H, W)`` bool (or 0/1) tensor.

    Returns:
        ``(N, 4)`` float32 ``x0, y0, x1, y1`` in pixels.
    """
    n = masks.shape[0]
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    # Project onto each axis once instead of materialising coordinate grids per mask. amax over
    # uint8 is 10-100x faster than any() over bool on CPU (measured, torch 2.14).
    masks = masks.as_subclass(torch.Tensor)  # plain tensor ops: no tv_tensors dispatch overhead
    if masks.dtype == torch.bool:
        masks_u8 = masks.view(torch.uint8)
    elif masks.dtype == torch.uint8:
        masks_u8 = masks
    else:
        masks_u8 = (masks != 0).to(torch.uint8)
    cols = masks_u8.amax(dim=1) > 0  # (N, W)
    rows = masks_u8.amax(dim=2) > 0  # (N, H)
    width, height = cols.shape[1], rows.shape[1]
    col_idx = torch.arange(width)
    row_idx = torch.arange(height)
    x0 = torch.where(cols, col_idx, width).amin(dim=1)
    x1 = torch.where(cols, col_idx + 1, 0).amax(dim=1)
    y0 = torch.where(rows, row_idx, height).amin(dim=1)
    y1 = torch.where(rows, row_idx + 1, 0).amax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    empty = ~cols.any(dim=1)
    boxes[empty] = 0.0
    return boxes


def panoptic_to_target(
    panoptic: np.ndarray,
    segments_info: Sequence[Mapping[str, Any]],
    category_to_label: Mapping[int, int],
    image_id: int | str | None = None,
) -> dict[str, torch.Tensor]:
    """Build the DETR target of one image from its panoptic id map.

    Args:
        panoptic: ``(H, W)`` int64 segment ids (``R + 256 G + 256**2 B`` of the panoptic PNG);
            0 is void.
        segments_info: The image's segments, dicts with at least ``id``, ``category_id`` and
            ``iscrowd`` (COCO category ids, as in the panoptic JSON).
        category_to_label: COCO category id -> contiguous model label ``0..K-1``.
        image_id: Only used to name the image in error messages.

    Returns:
        A dict with ``masks`` ``(N, H, W)`` bool, ``class_labels`` ``(N,)`` int64 and ``boxes``
        ``(N, 4)`` float32 xyxy in pixels (tight pixel-edge boxes of the masks). ``N`` may be 0.
        Crowd segments and segments without any pixel are left out.

    Raises:
        TargetError: A non-crowd segment has a category missing from ``category_to_label``.
    """
    if panoptic.ndim != 2:
        raise TargetError(f"image {image_id}: panoptic id map must be (H, W), got shape {panoptic.shape}")
    seg_ids: list[int] = []
    labels: list[int] = []
    for segment in segments_info:
        if segment.get("iscrowd", 0):
            continue  # crowd regions are neither positives nor negatives, as in DETR
        seg_id = int(segment["id"])
        if seg_id == VOID_ID:
            continue
        category_id = int(segment["category_id"])
        if category_id not in category_to_label:
            raise TargetError(
                f"image {image_id}: segment {seg_id} has category_id {category_id}, which is not one of "
                f"the dataset's categories {sorted(category_to_label)}"
            )
        seg_ids.append(seg_id)
        labels.append(category_to_label[category_id])

    height, width = panoptic.shape
    if seg_ids:
        ids = np.asarray(seg_ids, dtype=np.int64)
        # One vectorised comparison builds all masks: (1, H, W) == (N, 1, 1) -> (N, H, W).
        masks = torch.from_numpy(panoptic[None] == ids[:, None, None])
    else:
        masks = torch.zeros((0, height, width), dtype=torch.bool)
    class_labels = torch.as_tensor(labels, dtype=torch.int64)

    # A segment listed in segments_info but absent from the PNG cannot be predicted: drop it.
    keep = masks.view(torch.uint8).flatten(1).amax(dim=1) > 0
    masks, class_labels = masks[keep], class_labels[keep]
    return {"masks": masks, "class_labels": class_labels, "boxes": masks_to_xyxy(masks)}
