"""The training data path: HF panoptic rows -> DETR targets -> joint augmentation -> padded batches.

- `finetune.data.targets`: id map + ``segments_info`` -> masks, labels, boxes.
- `finetune.data.transforms`: DETR's augmentation on tv_tensors (image, masks, boxes jointly).
- `finetune.data.dataset`: `PanopticTrainingDataset` over one HF split.
- `finetune.data.collate`: `PanopticCollator` (normalise, pad, normalised cxcywh boxes).
- `finetune.data.loading`: `build_image_processor`, `build_dataloader` (seeded, resumable).
"""

from finetune.data.collate import PanopticCollator
from finetune.data.dataset import PanopticTrainingDataset, category_to_label_map
from finetune.data.loading import EpochSampler, build_dataloader, build_image_processor
from finetune.data.targets import TargetError, masks_to_xyxy, panoptic_to_target
from finetune.data.transforms import build_eval_transforms, build_train_transforms

__all__ = [
    "EpochSampler",
    "PanopticCollator",
    "PanopticTrainingDataset",
    "TargetError",
    "build_dataloader",
    "build_eval_transforms",
    "build_image_processor",
    "build_train_transforms",
    "category_to_label_map",
    "masks_to_xyxy",
    "panoptic_to_target",
]
