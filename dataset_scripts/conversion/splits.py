"""Deterministic train/val/test splits that give every class a chance to be evaluated.

A purely random split of a small CVAT project often leaves rare classes out of ``val``, so their
PQ is never measured. The split here is:

1. shuffle the image names (sorted first) with ``random.Random(seed)``;
2. for ``val`` and then ``test``: go through the classes from rarest to most common and, while
   the split has room, move one image of every class that is not yet represented there, provided
   that the class (and every other class of that image) keeps at least one image for ``train``;
3. fill the remaining quota in shuffled order, again preferring images whose move leaves every
   class an image in ``train``.

The same inputs and seed always give the same split.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Set


def _quota(total: int, ratio: float) -> int:
    if ratio <= 0 or total < 2:
        return 0
    return max(1, round(total * ratio))


def assign_splits(
    image_classes: Mapping[str, Set[str]], val_ratio: float = 0.2, test_ratio: float = 0.0, seed: int = 0
) -> dict[str, str]:
    """Assign every image to ``train``, ``val`` or ``test``.

    Args:
        image_classes: Classes present in each image, keyed by image name.
        val_ratio: Fraction of images for ``val`` (0 puts everything in ``train``).
        test_ratio: Fraction of images for ``test``.
        seed: Seed of the shuffle.

    Returns:
        Split name per image name.

    Raises:
        ValueError: ratios outside [0, 1) or summing to 1 or more.
    """
    if not (0 <= val_ratio < 1 and 0 <= test_ratio < 1 and val_ratio + test_ratio < 1):
        raise ValueError(
            f"need 0 <= val_ratio, test_ratio and val_ratio + test_ratio < 1, got {val_ratio}, {test_ratio}"
        )
    names = sorted(image_classes)
    random.Random(seed).shuffle(names)
    position = {name: i for i, name in enumerate(names)}
    split = dict.fromkeys(names, "train")
    left_in_train = Counter(c for name in names for c in image_classes[name])

    def movable(name: str) -> bool:
        return split[name] == "train" and all(left_in_train[c] >= 2 for c in image_classes[name])

    def move(name: str, target: str) -> None:
        split[name] = target
        for c in image_classes[name]:
            left_in_train[c] -= 1

    total_images = Counter(c for name in names for c in image_classes[name])
    by_rarity = sorted(total_images, key=lambda c: (total_images[c], c))
    for target, ratio in (("val", val_ratio), ("test", test_ratio)):
        quota = _quota(len(names), ratio)
        taken = 0
        covered: set[str] = set()
        for cls in by_rarity:
            if taken >= quota:
                break
            if cls in covered or total_images[cls] < 2:
                continue
            candidates = [n for n in names if cls in image_classes[n] and movable(n)]
            if not candidates:
                continue
            # Prefer the image that brings the most classes still missing from this split.
            best = max(candidates, key=lambda n: (len(image_classes[n] - covered), -position[n]))
            move(best, target)
            covered |= image_classes[best]
            taken += 1
        for strict in (True, False):
            for name in names:
                if taken >= quota:
                    break
                if split[name] == "train" and (movable(name) or not strict):
                    move(name, target)
                    taken += 1
    return split


# CVAT subset names that mean a split (compared case-insensitively).
SUBSET_SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test"}
# A video's frames are cut into this many contiguous ranges (fewer for a short video); the ranges,
# not the frames, are split, so that near-identical neighbouring frames stay in one split.
RANGES_PER_VIDEO = 10


def subset_split(subset: str) -> str | None:
    """The split a CVAT subset means (``Train`` -> ``train``, ``Validation``/``Val`` -> ``val``,
    ``Test`` -> ``test``), or ``None`` for any other name."""
    return SUBSET_SPLITS.get(subset.strip().casefold())


def frame_ranges(frames: Mapping[str, tuple[str, int]], ranges_per_video: int = RANGES_PER_VIDEO) -> dict[str, str]:
    """Cut every video's frames into contiguous ranges of (almost) equal length.

    Args:
        frames: ``(video, frame index)`` per image key.
        ranges_per_video: How many ranges per video (at most one per frame).

    Returns:
        The range (``"<video>#range<k>"``) of every key.
    """
    by_video: dict[str, list[tuple[int, str]]] = {}
    for key, (video, index) in frames.items():
        by_video.setdefault(video, []).append((index, key))
    unit: dict[str, str] = {}
    for video, items in by_video.items():
        items.sort()
        count = min(ranges_per_video, len(items))
        for position, (_, key) in enumerate(items):
            unit[key] = f"{video}#range{position * count // len(items)}"
    return unit
