"""Box mAP accumulator: COCOeval in memory, edge cases, merging across processes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from finetune.evaluation.box_map import BoxMapAccumulator

CATEGORIES = [{"id": 1, "name": "crane"}, {"id": 4, "name": "worker"}]


def _gt(rng, n):
    xy = rng.uniform(0, 100, size=(n, 2))
    wh = rng.uniform(10, 60, size=(n, 2))
    return np.concatenate([xy, wh], axis=1), rng.choice([1, 4], size=n)


def _fill(acc, images, shift=0.0, drop_predictions=False):
    for image_id, (boxes, cats) in images.items():
        xyxy = np.concatenate([boxes[:, :2] + shift, boxes[:, :2] + boxes[:, 2:] + shift], axis=1)
        if drop_predictions:
            xyxy, cats_pred = np.zeros((0, 4)), np.zeros(0, dtype=int)
        else:
            cats_pred = cats
        acc.update(
            image_id,
            xyxy,
            np.linspace(0.9, 0.5, len(xyxy)),
            cats_pred,
            boxes,
            cats,
            np.zeros(len(cats)),
            200,
            200,
        )


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return {i: _gt(rng, int(rng.integers(1, 6))) for i in range(6)}


def test_perfect_predictions_give_one(images):
    acc = BoxMapAccumulator(CATEGORIES)
    _fill(acc, images)
    assert acc.compute() == pytest.approx({"map": 1.0, "map_50": 1.0, "map_75": 1.0})


def test_shifted_boxes_score_lower(images):
    results = []
    for shift in (0.0, 3.0, 8.0):
        acc = BoxMapAccumulator(CATEGORIES)
        _fill(acc, images, shift=shift)
        results.append(acc.compute()["map"])
    assert results[0] > results[1] > results[2] > 0.0


def test_empty_predictions_and_empty_gt_give_zero(images):
    acc = BoxMapAccumulator(CATEGORIES)
    _fill(acc, images, drop_predictions=True)
    assert acc.compute() == {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
    assert BoxMapAccumulator(CATEGORIES).compute()["map"] == 0.0
    empty_gt = BoxMapAccumulator(CATEGORIES)
    empty_gt.update(0, [[0, 0, 10, 10]], [0.9], [1], np.zeros((0, 4)), [], [], 50, 50)
    assert empty_gt.compute()["map"] == 0.0


def test_crowd_gt_is_ignored():
    acc = BoxMapAccumulator(CATEGORIES)
    gt = [[10, 10, 30, 30], [60, 60, 30, 30]]
    # one detection on the normal box, one on the crowd box, one extra detection on the crowd box
    pred = [[10, 10, 40, 40], [60, 60, 90, 90], [62, 62, 88, 88]]
    acc.update(0, pred, [0.9, 0.95, 0.8], [1, 1, 1], gt, [1, 1], [0, 1], 100, 100)
    assert acc.compute()["map"] == pytest.approx(1.0)
    # the same top-scoring detections with no crowd box under them are false positives
    no_crowd = BoxMapAccumulator(CATEGORIES)
    no_crowd.update(0, pred, [0.9, 0.95, 0.8], [1, 1, 1], gt[:1], [1], [0], 100, 100)
    assert no_crowd.compute()["map"] < 0.6
    missed_crowd = BoxMapAccumulator(CATEGORIES)
    missed_crowd.update(0, pred[:1], [0.9], [1], gt, [1, 1], [0, 1], 100, 100)
    assert missed_crowd.compute()["map"] == pytest.approx(1.0)  # missing a crowd box costs nothing
    missed_plain = BoxMapAccumulator(CATEGORIES)
    missed_plain.update(0, pred[:1], [0.9], [1], gt, [1, 1], [0, 0], 100, 100)
    assert missed_plain.compute()["map"] < 0.6


def test_merge_and_pickle_equal_single_process(images):
    single = BoxMapAccumulator(CATEGORIES)
    _fill(single, images, shift=4.0)
    parts = [BoxMapAccumulator(CATEGORIES), BoxMapAccumulator(CATEGORIES)]
    for index, (image_id, item) in enumerate(images.items()):
        _fill(parts[index % 2], {image_id: item}, shift=4.0)
    # gather_object pickles the states; a repeated image (sampler padding) is counted once
    _fill(parts[1], {0: images[0]}, shift=4.0)
    states = [pickle.loads(pickle.dumps(p.state())) for p in parts]
    merged = BoxMapAccumulator(CATEGORIES)
    for state in states:
        merged.merge(state)
    assert len(merged) == len(images)
    assert merged.compute() == pytest.approx(single.compute())


def test_accepts_torch_and_rejects_unknown_category():
    acc = BoxMapAccumulator(CATEGORIES)
    acc.update(
        3,
        torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
        torch.tensor([0.5]),
        torch.tensor([4]),
        torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
        torch.tensor([4]),
        torch.tensor([0]),
        20,
        20,
    )
    assert acc.compute()["map"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"image 5: unknown category id\(s\) \[9\]"):
        acc.update(5, [[0, 0, 1, 1]], [0.5], [9], [], [], [], 20, 20)
