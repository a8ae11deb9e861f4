"""DataLoader and image-processor construction for training and evaluation.

Reproducibility and resumption: `EpochSampler` draws the order of epoch ``e`` from ``(seed, e)``
only and hands every sample its own seed, derived from ``(seed, e, index)``; the dataset seeds
its augmentation with it. So the batches of an epoch, augmentations included, do not depend on
the number of workers, on how many epochs ran in this process, or on a resume that skips the
first batches (``accelerate.skip_first_batches``). Call ``dataloader.set_epoch(epoch)`` (or the
sampler's) before each epoch; Accelerate's prepared loaders forward it to the sampler.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import DetrImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

logger = logging.getLogger(__name__)


def build_image_processor(eval_size: int = 800, max_size: int = 1333) -> DetrImageProcessor:
    """The ``DetrImageProcessor`` saved with the model, matching the eval transforms + collator.

    ``format="coco_panoptic"``, shortest edge ``eval_size``, longest at most ``max_size``,
    ImageNet mean/std, padding with a pixel mask.
    """
    return DetrImageProcessor(
        format="coco_panoptic",
        size={"shortest_edge": eval_size, "longest_edge": max_size},
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
        do_resize=True,
        do_rescale=True,
        do_normalize=True,
        do_pad=True,
    )


_ORDER_STREAM, _SAMPLE_STREAM = 0, 1


def _derived_seed(seed: int, epoch: int, stream: int, index: int = 0) -> int:
    """A well-mixed 63-bit seed from ``(seed, epoch, stream, index)`` (NumPy's SeedSequence)."""
    entropy = [int(seed) % 2**64, int(epoch), stream, int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Augmentation seed of sample ``index`` in ``epoch`` (independent of workers and resumption)."""
    return _derived_seed(seed, epoch, _SAMPLE_STREAM, index)


class EpochSampler(Sampler):
    """Deterministic per-epoch order that also hands each sample its augmentation seed.

    Yields ``(index, sample_seed)`` pairs, which `PanopticTrainingDataset` accepts as keys.

    Args:
        data_source: The dataset (only its length is used).
        shuffle: Random order (a fresh permutation per epoch) or ``0..n-1``.
        seed: Base seed of the run.
    """

    def __init__(self, data_source: Sized, shuffle: bool, seed: int) -> None:
        self.num_samples = len(data_source)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(_derived_seed(self.seed, self.epoch, _ORDER_STREAM))
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = range(self.num_samples)
        for index in order:
            yield index, sample_seed(self.seed, self.epoch, index)


def seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's RNGs in a worker from its torch seed (PyTorch's recipe).

    torch's own RNG is already seeded per worker from the loader's generator; the augmentation
    itself is reseeded per sample (see `EpochSampler`), so this only guards code that uses
    ``random``/``numpy`` directly.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    pin_memory: bool,
    collate_fn: Callable[[list[Any]], Any],
    seed: int,
    drop_last: bool = False,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A reproducible, resumable DataLoader over `PanopticTrainingDataset`.

    Workers decode and augment in parallel (``persistent_workers`` keeps them, and their decoded
    state, across epochs); pinned memory speeds host-to-GPU copies and is only requested when an
    accelerator is present.

    Args:
        dataset: A map-style dataset accepting ``(index, sample_seed)`` keys.
        batch_size: Images per batch.
        shuffle: Shuffle with a per-epoch permutation derived from ``seed``.
        num_workers: Worker processes (0 = load in the main process).
        pin_memory: Pin batches in page-locked memory (ignored without an accelerator).
        collate_fn: E.g. `finetune.data.collate.PanopticCollator`.
        seed: Base seed: same seed, same batches.
        drop_last: Drop the last incomplete batch.
        prefetch_factor: Batches prefetched per worker (PyTorch default 2).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if pin_memory and not torch.accelerator.is_available():
        logger.debug("pin_memory requested without an accelerator: disabled")
        pin_memory = False
    generator = torch.Generator().manual_seed(int(seed))
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = True
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(dataset, shuffle=shuffle, seed=seed),
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=seed_worker,
        **kwargs,
    )
