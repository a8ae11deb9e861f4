"""A synthetic COCO-panoptic training set in one call: plans -> CVAT exports -> converted folder.

Used by the tiny checkpoint's pretraining (`finetune/make_tiny_checkpoint.py`) and the training
benches (`bench/learning.py`, `bench/transfer.py`), which then train on it with `finetune/train.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from dataset_scripts.cvat_to_panoptic import ConversionOptions, convert_exports
from dataset_scripts.sample.export import write_dataset
from dataset_scripts.sample.plans import Plans, synthetic_plans
from dataset_scripts.sample.scene import STUFF_LABELS, THING_LABELS
from dataset_scripts.sample.seeds import TARGET
from dataset_scripts.sample.source_domain import rename_categories

logger = logging.getLogger(__name__)


def build_panoptic_set(
    out_dir: str | Path,
    plans: Plans,
    stuff_labels: Sequence[str],
    num_val: int,
    seed: int = 0,
    rename: Mapping[str, str] | None = None,
) -> Path:
    """Render `plans` as CVAT exports into `out_dir/cvat` and convert them into `out_dir/panoptic`.

    An existing `out_dir/panoptic` is reused as is (the folder name should encode the plans).

    Args:
        out_dir: working folder.
        plans: `dataset_scripts.sample.plans.synthetic_plans(...)` or `source_domain_plans(...)`.
        stuff_labels: the stuff category names (after `rename`).
        num_val: images in the `val` split (the rest is `train`).
        seed: split seed.
        rename: {rendered label: category name written to the exports} (the source domain's names).

    Returns:
        The COCO-panoptic folder (`finetune/train.py --dataset_dir`).
    """
    out_dir = Path(out_dir)
    panoptic = out_dir / "panoptic"
    if (panoptic / "annotations").is_dir():
        return panoptic
    cvat = out_dir / "cvat"
    write_dataset(cvat, plans, overwrite=True)
    exports = [cvat / name for name in plans]
    if rename:
        for export in exports:
            rename_categories(export, rename)
    total = sum(len(images) for _, images in plans.values())
    options = ConversionOptions(
        stuff_labels=list(stuff_labels), val_ratio=num_val / total, seed=seed, overwrite=True
    )
    convert_exports(exports, panoptic, options)
    logger.info("synthetic set: %d images in %s", total, panoptic)
    return panoptic


def sample_classes_plans(num_images: int, size: tuple[int, int], seed: int) -> Plans:
    """The plans of a training bench's target set: the bundled sample's 8 classes, 1-2 things per scene.

    Things brick, pipe, tile, excavator over floor/wall/sky/ground, drawn from the `seeds.TARGET` scene
    seeds: no scene (image or stuff layout) of the shipped checkpoint's pretraining.
    """
    return synthetic_plans(
        num_images,
        seed=seed,
        size=size,
        exports=1,
        min_things=1,
        max_things=2,
        thing_labels=THING_LABELS,
        seed_range=TARGET,
    )


def sample_classes_set(
    work_dir: str | Path, num_train: int, num_val: int, size: tuple[int, int], seed: int
) -> Path:
    """The target set of `sample_classes_plans` converted to COCO panoptic, cached in `work_dir`."""
    width, height = size
    plans = sample_classes_plans(num_train + num_val, size, seed)
    # The first scene seed in the name: a folder cached before the seed ranges is not reused.
    first = next(iter(plans.values()))[1][0].seed
    tag = f"target_{width}x{height}_{num_train}_{num_val}_seed{seed}_scene{first}"
    return build_panoptic_set(Path(work_dir) / tag, plans, STUFF_LABELS, num_val, seed=seed)
