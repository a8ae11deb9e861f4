"""A torch ``Dataset`` over one split of the panoptic HF dataset, yielding augmented DETR targets."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from dataset_scripts.panoptic_format import rgb2id
from finetune.data.targets import TargetError, panoptic_to_target

Sample = tuple[torch.Tensor, dict[str, torch.Tensor]]


def category_to_label_map(categories: list[Mapping[str, Any]]) -> dict[int, int]:
    """COCO category id -> contiguous label, in the order of ``load_categories(...)`` (interface 3)."""
    return {int(category["id"]): label for label, category in enumerate(categories)}


class PanopticTrainingDataset(Dataset):
    """One split of the HF panoptic dataset as ``(image, target)`` training samples.

    Each item decodes the image and the panoptic PNG once (in the DataLoader worker), builds the
    binary masks with one vectorised comparison, applies ``transforms`` jointly to image, masks and
    boxes, and returns:

    - ``image``: ``(3, H, W)`` uint8 tensor (the transformed image; normalisation happens in
      `finetune.data.collate.PanopticCollator`, after padding, like ``DetrImageProcessor``),
    - ``target``: ``masks`` ``(N, H, W)`` bool, ``class_labels`` ``(N,)`` int64, ``boxes`` ``(N, 4)``
      float32 XYXY pixels of the transformed image, ``image_id`` ``(1,)`` int64, ``orig_size`` and
      ``size`` ``(2,)`` int64 ``(height, width)`` before and after the transforms.

    Args:
        hf_split: A ``datasets.Dataset`` with the rows of interface 2 (``image``, ``panoptic``,
            ``segments_info``, ``image_id``, ...).
        category_to_label: COCO category id -> label ``0..K-1`` (see `category_to_label_map`).
        transforms: ``(image, target) -> (image, target)`` over tv_tensors, e.g. from
            `finetune.data.transforms.build_train_transforms`; ``None`` keeps the original size.
    """

    def __init__(
        self,
        hf_split: Any,
        category_to_label: Mapping[int, int],
        transforms: Callable[..., Any] | None = None,
    ) -> None:
        self.hf_split = hf_split
        self.category_to_label = dict(category_to_label)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.hf_split)

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        """``dataset[index]``, or ``dataset[(index, seed)]`` to seed this sample's augmentation.

        `finetune.data.loading.EpochSampler` yields the seeded form, which makes augmentations
        independent of worker count and of resumption. The seed is applied in a forked RNG, so the
        caller's global torch RNG is left untouched.
        """
        if isinstance(key, tuple):
            index, seed = key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self._load(int(index))
        return self._load(int(key))

    def _load(self, index: int) -> Sample:
        row = self.hf_split[index]
        image_id = int(row["image_id"])
        image = row["image"]
        if image.mode != "RGB":
            image = image.convert("RGB")
        panoptic_png = row["panoptic"]
        if panoptic_png.mode != "RGB":
            raise TargetError(f"image {image_id}: panoptic PNG must be RGB, got mode {panoptic_png.mode}")
        ids = rgb2id(np.asarray(panoptic_png))
        if ids.shape != (image.height, image.width):
            raise TargetError(
                f"image {image_id} ({row.get('file_name')}): panoptic PNG is {ids.shape[1]}x{ids.shape[0]} "
                f"but the image is {image.width}x{image.height}"
            )
        target = panoptic_to_target(ids, row["segments_info"], self.category_to_label, image_id=image_id)

        height, width = ids.shape
        sample_image = tv_tensors.Image(F.pil_to_tensor(image))
        sample_target: dict[str, Any] = {
            # uint8 masks: the geometric kernels are several times faster on uint8 than on bool.
            "masks": tv_tensors.Mask(target["masks"].to(torch.uint8)),
            "boxes": tv_tensors.BoundingBoxes(
                target["boxes"], format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(height, width)
            ),
            "class_labels": target["class_labels"],
        }
        if self.transforms is not None:
            sample_image, sample_target = self.transforms(sample_image, sample_target)

        out_h, out_w = sample_image.shape[-2:]
        out_target = {
            "masks": sample_target["masks"].as_subclass(torch.Tensor).bool(),
            "class_labels": sample_target["class_labels"],
            "boxes": sample_target["boxes"].as_subclass(torch.Tensor).to(torch.float32),
            "image_id": torch.tensor([image_id], dtype=torch.int64),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
            "size": torch.tensor([out_h, out_w], dtype=torch.int64),
        }
        return sample_image.as_subclass(torch.Tensor), out_target
