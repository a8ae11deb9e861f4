"""Targets from a panoptic id map: crowd/void handling, label mapping, boxes, empty images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset_scripts.panoptic_format import segment_stats
from finetune.data.targets import TargetError, masks_to_xyxy, panoptic_to_target


def _seg(seg_id: int, category_id: int, iscrowd: int = 0) -> dict:
    return {"id": seg_id, "category_id": category_id, "iscrowd": iscrowd, "area": 0, "bbox": [0, 0, 0, 0]}


@pytest.fixture
def id_map() -> np.ndarray:
    ids = np.zeros((40, 50), dtype=np.int64)  # 0 = void
    ids[:20, :] = 7  # stuff band (category 30)
    ids[5:15, 10:25] = 1001  # thing (category 12)
    ids[25:38, 30:45] = 1002  # crowd thing (category 12)
    ids[22:30, 2:8] = 1003  # thing (category 40)
    return ids


SEGMENTS = [_seg(7, 30), _seg(1001, 12), _seg(1002, 12, iscrowd=1), _seg(1003, 40)]
CAT_TO_LABEL = {12: 0, 30: 1, 40: 2}


def test_masks_labels_and_boxes(id_map):
    target = panoptic_to_target(id_map, SEGMENTS, CAT_TO_LABEL)
    assert target["masks"].dtype == torch.bool and target["masks"].shape == (3, 40, 50)
    assert target["class_labels"].tolist() == [1, 0, 2]
    stats = segment_stats(id_map)
    for mask, seg_id, box in zip(target["masks"], [7, 1001, 1003], target["boxes"], strict=True):
        assert torch.equal(mask, torch.from_numpy(id_map == seg_id))
        x, y, w, h = stats[seg_id].bbox  # independent implementation (scipy find_objects)
        assert box.tolist() == [x, y, x + w, y + h]


def test_crowd_and_void_never_become_targets(id_map):
    target = panoptic_to_target(id_map, SEGMENTS, CAT_TO_LABEL)
    covered = target["masks"].any(dim=0).numpy()
    assert not covered[id_map == 0].any(), "void pixels leaked into a mask"
    assert not covered[id_map == 1002].any(), "crowd pixels leaked into a mask"
    assert covered[(id_map != 0) & (id_map != 1002)].all()
    # Every pixel belongs to at most one target mask.
    assert int(target["masks"].sum(dim=0).max()) == 1


def test_unknown_category_names_image_and_segment(id_map):
    with pytest.raises(TargetError, match=r"image 77: segment 1003 has category_id 40"):
        panoptic_to_target(id_map, SEGMENTS, {12: 0, 30: 1}, image_id=77)
    # A crowd segment with an unknown category is ignored, not an error.
    crowd_only = [_seg(1002, 99, iscrowd=1)]
    assert panoptic_to_target(id_map, crowd_only, CAT_TO_LABEL)["masks"].shape[0] == 0


@pytest.mark.parametrize("segments", [[], [_seg(1002, 12, iscrowd=1)], [_seg(5555, 12)]])
def test_empty_targets_are_valid_tensors(id_map, segments):
    # no segments, only crowd, or a listed segment absent from the PNG
    target = panoptic_to_target(id_map, segments, CAT_TO_LABEL)
    assert target["masks"].shape == (0, 40, 50) and target["masks"].dtype == torch.bool
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["class_labels"].shape == (0,) and target["class_labels"].dtype == torch.int64


def test_masks_to_xyxy_pixel_edges():
    masks = torch.zeros((3, 6, 8), dtype=torch.bool)
    masks[0, 2, 3] = True  # one pixel
    masks[1, 1:5, 0:8] = True  # touches left and right edges
    boxes = masks_to_xyxy(masks)  # masks[2] empty
    assert boxes.tolist() == [[3, 2, 4, 3], [0, 1, 8, 5], [0, 0, 0, 0]]
    assert masks_to_xyxy(torch.zeros((0, 6, 8), dtype=torch.bool)).shape == (0, 4)
