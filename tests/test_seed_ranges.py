"""No scene of a target set or of the bundled sample is a scene the shipped checkpoint was pretrained on.

The tiny checkpoint (`pretrained/tiny-detr-panoptic`) was pretrained on `source_domain_plans` with
`finetune/make_tiny_checkpoint.py`'s defaults. A set that measures fine-tuning (the transfer bench's
target set) or that the quickstart fine-tunes on (`sample_data/`) must not repeat one of its images,
nor its stuff layout (the two bands and the horizon, which a scene seed fixes at any image size).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from bench import learning, transfer
from dataset_scripts.sample.plans import Plans, bundled_sample_plans, synthetic_plans
from dataset_scripts.sample.scene import render_scene
from dataset_scripts.sample.seeds import PRETRAINING, SAMPLE, SEED_RANGES, TARGET
from dataset_scripts.sample.source_domain import source_domain_plans
from dataset_scripts.sample.synthetic_set import sample_classes_plans
from finetune import make_tiny_checkpoint


def rendered(plans: Plans) -> list[tuple[str, str, tuple[str, str], float, float, int]]:
    """Per image: (file name, pixel hash with the size, stuff labels (upper, lower), horizon left and
    right as fractions of the height, height)."""
    out = []
    for _, images in plans.values():
        for plan in images:
            scene = render_scene(plan.seed, plan.options)
            upper, lower = scene.shapes[:2]
            height = scene.image.shape[0]
            # The upper band's polygon is [0, 0, w, 0, w, right_y, 0, left_y] (`scene._paint_stuff`).
            right_y, left_y = upper.polygons[0][5], upper.polygons[0][7]
            digest = hashlib.sha256(repr(scene.image.shape).encode() + scene.image.tobytes()).hexdigest()
            out.append((plan.file_name, digest, (upper.label, lower.label), left_y / height, right_y / height, height))
    return out


@pytest.fixture(scope="module")
def pretraining() -> list[tuple[str, str, tuple[str, str], float, float, int]]:
    """The shipped checkpoint's pretraining scenes (`make_tiny_checkpoint.py`'s defaults)."""
    return rendered(source_domain_plans(make_tiny_checkpoint.NUM_IMAGES, seed=make_tiny_checkpoint.SEED))


def shared_scenes(scenes, pretraining) -> list[str]:
    """The scenes whose pixels or stuff layout equal a pretraining scene's.

    Two layouts are equal when their stuff labels are and both horizon ends agree within the rounding
    of the polygons (0.01 px at each image's height): the same seed rendered at another size.
    """
    pixels = {digest for _, digest, *_ in pretraining}
    labels = [stuff for _, _, stuff, *_ in pretraining]
    ends = np.array([(left, right) for *_, left, right, _ in pretraining])
    heights = np.array([height for *_, height in pretraining])[:, None]
    shared = []
    for name, digest, stuff, left, right, height in scenes:
        # Each polygon coordinate is rounded to 0.01 px: up to 0.005 px at either height (and a margin).
        tolerance = 0.0051 / heights + 0.0051 / height
        close = np.all(np.abs(ends - (left, right)) <= tolerance, axis=1)
        same_layout = any(close[i] and labels[i] == stuff for i in np.flatnonzero(close))
        if digest in pixels or same_layout:
            shared.append(name)
    return shared


def test_the_seed_ranges_are_disjoint():
    for i, first in enumerate(SEED_RANGES):
        for second in SEED_RANGES[i + 1 :]:
            assert first.stop <= second.start or second.stop <= first.start, (first, second)
    assert PRETRAINING.start == 0  # the shipped checkpoint's scenes are set seed 0's first 600


def test_a_range_refuses_seeds_outside_it():
    assert TARGET.scene_seed(0, 0) == TARGET.start
    assert TARGET.scene_seed(2, 5) == TARGET.start + 2 * 1_000_003 + 5
    with pytest.raises(ValueError, match="--seed"):
        PRETRAINING.scene_seed(10**6, 0)  # would run into TARGET
    with pytest.raises(ValueError, match="--seed"):
        TARGET.scene_seed(-1, 0)  # would run into PRETRAINING
    with pytest.raises(ValueError, match="--num-images"):
        SAMPLE.scene_seed(0, 1000, stride=1000)  # would run into set seed 1's block
    with pytest.raises(ValueError, match="--seed"):
        synthetic_plans(4, seed=10**6)


def test_every_plan_generator_draws_from_its_own_range():
    assert all(p.seed in PRETRAINING for _, images in source_domain_plans(5).values() for p in images)
    assert all(p.seed in TARGET for _, images in synthetic_plans(5, seed=3).values() for p in images)
    assert all(p.seed in TARGET for _, images in sample_classes_plans(5, (96, 72), 0).values() for p in images)
    assert all(p.seed in SAMPLE for _, images in bundled_sample_plans(0).values() for p in images)


@pytest.mark.parametrize(
    ("name", "plans"),
    [
        # bench/transfer.py's target set (fine-tunes the checkpoint): same size as the pretraining scenes.
        ("transfer", lambda: sample_classes_plans(160 + 40, transfer.IMAGE_SIZE, 0)),
        # bench/learning.py's set (96x72), and the bundled sample the quickstart fine-tunes on.
        ("learning", lambda: sample_classes_plans(400 + 50, learning.IMAGE_SIZE, 0)),
        ("sample_data", lambda: bundled_sample_plans(0)),
    ],
)
def test_no_scene_is_a_pretraining_scene(name, plans, pretraining):
    shared = shared_scenes(rendered(plans()), pretraining)
    assert not shared, f"{name}: {len(shared)} scenes share pixels or stuff layout with pretraining: {shared[:5]}"


def test_the_check_sees_a_shared_scene(pretraining):
    """The check itself: a pretraining seed rendered with the target classes (other things, same
    stuff layout) and at another size (same layout, other pixels) is caught."""
    same_seed = synthetic_plans(3, seed=0, size=(320, 240), exports=1, seed_range=PRETRAINING)
    assert len(shared_scenes(rendered(same_seed), pretraining)) == 3
