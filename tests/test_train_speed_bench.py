"""bench/train_speed.py: each row's sides do what its label says.

No timing is asserted (speed figures live in the bench's output, not in tests).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from transformers import DetrForSegmentation
from transformers.loss.loss_for_object_detection import HungarianMatcher

from bench import train_speed


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = DetrForSegmentation(train_speed.model_config("tiny"))
    scenes = [train_speed.make_scene(np.random.default_rng(0), 64, 80, index=i) for i in range(2)]
    return model, train_speed.ours_batches(scenes, batch_size=2)[0]


def _matchings(monkeypatch) -> list[int]:
    calls = []
    original = HungarianMatcher.forward

    def counting(self, outputs, targets):
        calls.append(len(targets))
        return original(self, outputs, targets)

    monkeypatch.setattr(HungarianMatcher, "forward", counting)
    return calls


def test_masks_before_side_redoes_the_box_loss_and_ours_does_not(tiny, monkeypatch):
    """'before' = the old stage masks: the frozen DETR's box losses, one matching per decoder layer and image."""
    model, batch = tiny
    _, sides = train_speed.ROWS["masks-vs-before"]
    matchings = {}
    for name, side in sides.items():
        calls = _matchings(monkeypatch)
        side.loss(copy.deepcopy(model))(batch)
        matchings[name] = len(calls)
    layers = model.config.decoder_layers  # final layer + (layers - 1) auxiliary ones, plus the mask loss's
    assert matchings == {"ours": 1, "before": layers + 1}


def test_masks_before_and_ours_have_the_same_gradients_and_a_difference_is_caught(tiny, monkeypatch):
    model, batch = tiny
    _, sides = train_speed.ROWS["masks-vs-before"]
    assert train_speed.check_same_gradients(model, sides, batch) <= 1e-4

    doubled = dict(sides)
    base = sides["before"].loss
    doubled["before"] = train_speed.Side("ours", "masks", lambda m: (lambda b: 2 * base(m)(b)))
    with pytest.raises(RuntimeError, match="gradients differ"):
        train_speed.check_same_gradients(model, doubled, batch)


def test_tutorial_masks_side_runs_the_frozen_detr_in_eval_mode_like_ours(tiny):
    model, _ = tiny
    _, sides = train_speed.ROWS["masks-vs-tutorial"]
    tutorial = sides["tutorial"]
    copied = copy.deepcopy(model)
    train_speed.make_step(copied, [], tutorial.trainable, tutorial.loss(copied), tutorial.frozen_detr_eval)
    assert not copied.detr.training and copied.mask_head.training
    assert not any(p.requires_grad for p in copied.detr.parameters())


def test_rows_state_what_they_compare_and_a_run_prints_it(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="train_speed")
    results = train_speed.main(
        ["--configs", "tiny", "--rows", "masks-vs-before,collate-bool", "--steps", "1", "--warmup", "0",
         "--size", "64x80", "--batch-size", "2"]
    )  # fmt: skip
    assert [(r["row"], r["compares"], r["sides"]) for r in results] == [
        ("masks-vs-before", "same work, same gradients", "ours/before"),
        ("collate-bool", "same tensors, bool vs float32 masks", "bool/float32"),
    ]
    assert all(r["ratio"] > 0 for r in results)
    assert "alternate step by step (ABBA)" in caplog.text
    labels = {compares for compares, _ in train_speed.ROWS.values()}
    assert labels == {"same work", "same work, same gradients", "less work by design"}
