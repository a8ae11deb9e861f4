"""bench/inference_speed.py compares what it times: every side's segments, and a difference is caught."""

from __future__ import annotations

import copy

import pytest

from bench import inference_speed


def test_every_side_gives_the_same_nonempty_segments_on_the_trained_checkpoint():
    """The bench's exact check, run here: our selected-queries path, the full forward and the pipeline."""
    segments = {side: inference_speed.checkpoint_segments(side) for side in inference_speed.SIDES}
    assert all(len(image) >= 2 for image in segments["ours"]), segments["ours"]  # an excavator or a stuff band or two
    runs = [(side, 0, found) for side, found in segments.items()]
    assert inference_speed.segment_mismatches(runs) == []


@pytest.mark.parametrize(
    "change",
    [
        lambda image: image.pop(),  # a segment missing
        lambda image: image[0].__setitem__(0, image[0][0] + 1),  # another label
        lambda image: image[0].__setitem__(3, "0" * 40),  # another mask
        lambda image: image[0].__setitem__(1, image[0][1] + 1e-3),  # another score
    ],
)
def test_a_difference_is_a_mismatch(change):
    reference = [[[3, 0.9, 120, "a" * 40], [5, 0.7, 300, "b" * 40]], [[4, 0.8, 50, "c" * 40]]]
    changed = copy.deepcopy(reference)
    change(changed[0])
    runs = [("ours", 0, reference), ("full", 1, changed)]
    assert len(inference_speed.segment_mismatches(runs)) == 1
    noise = copy.deepcopy(reference)
    noise[0][0][1] += inference_speed.SCORE_TOLERANCE / 2  # float noise of another path: the same segment
    assert inference_speed.segment_mismatches([("ours", 0, reference), ("full", 0, noise)]) == []


def test_masks_can_be_left_out_of_the_comparison():
    reference = [[[3, 0.9, 120, "a" * 40]]]
    other_mask = [[[3, 0.9, 118, "d" * 40]]]
    runs = [("ours", 0, reference), ("pipeline", 0, other_mask)]
    assert inference_speed.segment_mismatches(runs, masks=False) == []
    assert len(inference_speed.segment_mismatches(runs)) == 1
    assert inference_speed.same_masks(runs) == (0, 1)
