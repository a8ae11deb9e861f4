"""Where the training data comes from: a given dataset folder, or the bundled CVAT sample.

* `data.dataset_dir` is a COCO-panoptic folder (interface 1, has `annotations/`): prepared with
  `dataset_scripts.panoptic_builder.build_hf_dataset` (Arrow cache under `output_dir/dataset/arrow`).
* `data.dataset_dir` is a `DatasetDict.save_to_disk` folder (`dataset_scripts/build_dataset.py`):
  `datasets.load_from_disk`.
* `data.dataset_dir` is null: the bundled CVAT sample (`data.sample_exports`) is converted with
  `dataset_scripts.cvat_to_panoptic.convert_exports` into `output_dir/dataset/panoptic` once (kept for
  later runs and resumes), then prepared as above. Its train/val split uses `data.split_seed`, not the
  training seed, so it is the split `make convert-sample` writes whatever `run.seed` is.

In a multi-process run the main process converts/prepares first, the others then read its cache.
"""

from __future__ import annotations

from pathlib import Path

import datasets
from accelerate import Accelerator
from accelerate.logging import get_logger

from dataset_scripts.cvat_to_panoptic import ConversionOptions, convert_exports
from dataset_scripts.panoptic_builder import build_hf_dataset, load_categories
from finetune.config import DataConfig

logger = get_logger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]  # the repo holding sample_data/


class DatasetSourceError(ValueError):
    """`data.dataset_dir` is neither a COCO-panoptic folder nor a saved `DatasetDict`."""


def convert_sample(data: DataConfig, dataset_root: Path) -> Path:
    """Convert the bundled CVAT sample into `dataset_root/panoptic` unless already done; return that folder.

    The options are those of `make convert-sample` (`data.sample_stuff_labels`, `data.sample_val_ratio`,
    `data.split_seed`), independent of the training seed.
    """
    panoptic_dir = dataset_root / "panoptic"
    if not (panoptic_dir / "report.json").is_file():  # report.json is written last: conversion complete
        exports = [Path(p) if Path(p).is_absolute() else REPO_ROOT / p for p in data.sample_exports]
        logger.info(f"converting the CVAT sample {[str(p) for p in exports]} into {panoptic_dir}")
        options = ConversionOptions(
            stuff_labels=tuple(data.sample_stuff_labels),
            val_ratio=data.sample_val_ratio,
            seed=data.split_seed,
            overwrite=True,
        )
        convert_exports(exports, panoptic_dir, options)
    return panoptic_dir


def _prepare(data: DataConfig, dataset_root: Path) -> datasets.DatasetDict:
    if data.dataset_dir is None:
        return build_hf_dataset(convert_sample(data, dataset_root), cache_dir=dataset_root / "arrow")
    source = Path(data.dataset_dir)
    if (source / "annotations").is_dir():
        return build_hf_dataset(source, cache_dir=dataset_root / "arrow")
    if (source / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(source))
    raise DatasetSourceError(
        f"data.dataset_dir={source}: expected a COCO-panoptic folder (with annotations/panoptic_<split>.json, "
        "from dataset_scripts/cvat_to_panoptic.py) or a saved DatasetDict (dataset_scripts/build_dataset.py)"
    )


def _first(split: datasets.Dataset, n: int | None) -> datasets.Dataset:
    return split if n is None or n >= len(split) else split.select(range(n))


def load_dataset_splits(
    data: DataConfig, output_dir: Path, accelerator: Accelerator
) -> tuple[datasets.Dataset, datasets.Dataset, list[dict]]:
    """The training and evaluation splits and the category table (label i = categories[i]).

    Raises:
        DatasetSourceError: unusable `dataset_dir`, or a missing split.
    """
    with accelerator.main_process_first():
        dataset = _prepare(data, output_dir / "dataset")
    for split in (data.train_split, data.eval_split):
        if split not in dataset:
            raise DatasetSourceError(
                f"dataset has no split '{split}' (it has {list(dataset)}); see data.*_split"
            )
    categories = load_categories(dataset)
    train = _first(dataset[data.train_split], data.max_train_samples)
    evaluation = _first(dataset[data.eval_split], data.max_eval_samples)
    logger.info(
        f"dataset: {len(train)} training / {len(evaluation)} evaluation images, {len(categories)} classes"
    )
    return train, evaluation, categories
