"""Stuff pseudo-labelling: run a pretrained COCO panoptic DETR over pictures and cache their stuff maps.

`pseudo_label_stuff` is the resumable orchestrator: it loads the model (`load_stuff_model`, through the
project's one checkpoint loader), predicts batches of pictures with the inference core
(`finetune.inference.core.predict_batch`: the mask head runs only on the queries that pass the
threshold), maps each panoptic prediction to stuff classes (`dataset_scripts.stuff.mapping`) and writes
one cache file per picture (`dataset_scripts.stuff.cache`). Given an Accelerate ``PartialState`` of
several processes (``accelerate launch`` / ``torchrun``), each process labels its share of the pictures
(``split_between_processes``) and writes its own cache entries; the main process then merges the
processes' lists and checks that every picture is cached.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from dataset_scripts.coco_panoptic import CheckpointLabels
from dataset_scripts.image_io import load_upright_rgb
from dataset_scripts.stuff.cache import (
    is_cached,
    model_identity,
    run_fingerprint,
    write_cache_info,
    write_cached,
)
from dataset_scripts.stuff.mapping import StuffMapping, map_panoptic_prediction

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "facebook/detr-resnet-50-panoptic"


class StuffModelError(RuntimeError):
    """The stuff model cannot be loaded or run (the message says which option to change)."""


def default_load_image(path: Path) -> Image.Image:
    """Decode a picture upright (EXIF orientation applied, as CVAT shows it) in RGB.

    Raises:
        ConversionError: (a ``ValueError``) the file cannot be decoded; the message names it.
    """
    return load_upright_rgb(Path(path))[0]


def _offline_message(name: str, why: str) -> str:
    return (
        f"cannot load the stuff model {name!r}: {why}. The Hugging Face Hub is not reachable: download "
        f"it where it is (`hf download {name} --local-dir models/{name.split('/')[-1]}`), copy the folder "
        f"here and pass its PATH, e.g. `--stuff-from-model models/{name.split('/')[-1]}`"
    )


def load_stuff_model(model_name_or_path: str, device: str) -> tuple[Any, Any]:
    """Load the image processor and ``DetrForSegmentation`` (`finetune.modeling.loading.load_checkpoint`).

    Returns:
        ``(processor, model in eval mode on device)``.

    Raises:
        StuffModelError: missing folder, unreachable Hub, or a checkpoint that is not a panoptic
            ``DetrForSegmentation`` with a processor.
    """
    from finetune.modeling.loading import ModelUnavailableError, load_checkpoint

    try:
        model, processor, _ = load_checkpoint(model_name_or_path, with_processor=True)
    except ModelUnavailableError as err:
        raise StuffModelError(_offline_message(model_name_or_path, str(err))) from err
    except OSError as err:
        if not Path(model_name_or_path).expanduser().exists():
            raise StuffModelError(f"{model_name_or_path}: no such stuff model folder") from err
        raise StuffModelError(f"cannot load the stuff model {model_name_or_path!r}: {err}") from err
    architectures = model.config.architectures or []
    if architectures and "DetrForSegmentation" not in architectures:
        raise StuffModelError(
            f"{model_name_or_path}: a {architectures} checkpoint has no trained mask head; "
            "a panoptic DetrForSegmentation is needed (e.g. facebook/detr-resnet-50-panoptic)"
        )
    if not hasattr(processor, "post_process_panoptic_segmentation"):
        raise StuffModelError(
            f"{model_name_or_path}: its image processor cannot post-process panoptic outputs"
        )
    return processor, model.to(device).eval()


def stuff_label_ids(labels: CheckpointLabels, mapping: StuffMapping, model_name: str) -> frozenset[int]:
    """The model's rows that are stuff per the mapping (fused per image).

    Args:
        labels: the model's rows resolved through the COCO-panoptic table (`LABEL_199` is `wall-other-merged`).
        mapping: the stuff mapping.
        model_name: for messages.
    """
    ids = frozenset(row for name, row in labels.rows.items() if mapping.is_stuff_label(name))
    if not ids:
        raise StuffModelError(
            f"{model_name}: none of its labels (e.g. {sorted(labels.rows)[:5]}) is a stuff label of "
            f"{mapping.source}; is it a COCO panoptic model, or does the mapping need its label names?"
        )
    missing = {name: labels.close_matches(name) for name in sorted(set(mapping.stuff_labels) - set(labels.rows))}
    if missing:
        logger.warning(
            "%s: stuff labels that %s cannot predict (close matches): %s", mapping.source, model_name, missing
        )
    return ids


class StuffLabeller:
    """A loaded stuff model: pictures in, (H, W) int16 stuff maps out.

    The id maps are post-processed at the network's input size and resized (nearest) to each upright
    picture, not the per-query masks (`PostProcessing.resize_ids`): pictures of tens of megapixels would
    otherwise need gigabytes per kept query.
    """

    def __init__(self, model_name_or_path: str, mapping: StuffMapping, threshold: float, device: str) -> None:
        from finetune.inference.core import PostProcessing

        self.processor, self.model = load_stuff_model(model_name_or_path, device)
        self.mapping = mapping
        self.labels = CheckpointLabels.from_id2label(self.model.config.id2label)
        fuse = stuff_label_ids(self.labels, mapping, model_name_or_path)
        # transformers' default mask thresholds, as DETR's panoptic demo uses them
        self.postprocessing = PostProcessing(threshold, 0.5, 0.8, fuse, resize_ids=True)

    def __call__(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """One (H, W) int16 stuff map per upright picture (indices into ``mapping.stuff_names``, -1 void)."""
        from finetune.inference.core import predict_images

        output = predict_images(self.model, self.processor, images, self.postprocessing)
        return [
            map_panoptic_prediction(p.ids, p.segments, self.labels.names, self.mapping)
            for p in output.predictions
        ]


def _label_batches(
    todo: Sequence[tuple[str, Path]],
    labeller_factory: Callable[[], StuffLabeller],
    cache_dir: Path,
    fingerprint: str,
    batch_size: int,
    load_image: Callable[[Path], Image.Image],
) -> list[str]:
    """Label `todo` batch by batch, each map cached as soon as its batch is done; returns the keys."""
    if not todo:
        return []
    labeller = labeller_factory()
    done = []
    with tqdm(total=len(todo), desc="stuff pseudo-labels", unit="img") as progress:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            maps = labeller([load_image(path) for _, path in batch])
            for (key, _), stuff in zip(batch, maps, strict=True):
                write_cached(cache_dir, key, fingerprint, stuff)
                done.append(key)
            progress.update(len(batch))
    return done


def pseudo_label_stuff(
    items: Sequence[tuple[str, Path]],
    model_name_or_path: str,
    mapping: StuffMapping,
    cache_dir: Path,
    batch_size: int | None = None,
    device: str | None = None,
    load_image: Callable[[Path], Image.Image] | None = None,
    threshold: float = 0.85,
    state: Any = None,
) -> None:
    """Predict and cache a stuff map for every image not cached yet (resumable, optionally sharded).

    Each image's map is written atomically as soon as its batch is done, so an interrupted run
    continues where it stopped. Cached maps made with another model, mapping or threshold are
    recomputed. The model is not even loaded when every image is cached.

    Args:
        items: ``(key, image path)`` pairs; the key (unique, any characters) names the image
            for ``load_stuff_map``.
        model_name_or_path: A Hub id (``facebook/detr-resnet-50-panoptic``) or a local folder
            holding a ``DetrForSegmentation`` checkpoint and its image processor.
        mapping: Model label -> our stuff class (``load_stuff_mapping``).
        cache_dir: Folder of the cached maps (created).
        batch_size: Images per forward pass; None = 4 on a GPU, 1 on CPU (batching does not speed up
            CPU inference).
        device: Torch device; None = the process's device of `state`, else ``cuda`` when available,
            else ``cpu``.
        load_image: Decodes an image upright in RGB; default ``default_load_image``.
        threshold: Minimum class score of a predicted segment (DETR's 0.85).
        state: An Accelerate ``PartialState`` to shard the images over its processes (every process calls
            this function with the same arguments); None = this process labels everything.

    Raises:
        ValueError: duplicate keys or ``batch_size`` < 1.
        StuffModelError: the model cannot be loaded (offline Hub id, wrong checkpoint).
        StuffCacheError: with several processes, an image that no process cached.
        ConversionError: an image cannot be decoded (from the default ``load_image``; earlier
            batches stay cached). A custom ``load_image`` may raise its own errors (e.g. ``OSError``).
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    duplicates = sorted(key for key, n in Counter(key for key, _ in items).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate image keys for stuff pseudo-labels: {duplicates[:5]}")
    cache_dir = Path(cache_dir)
    model_id = model_identity(model_name_or_path)
    fingerprint = run_fingerprint(model_id, mapping, threshold)
    # Every process lists the same work before any of them writes.
    todo = [(key, Path(path)) for key, path in items if not is_cached(cache_dir, key, fingerprint)]
    if state is not None:
        state.wait_for_everyone()
    if state is None or state.is_main_process:
        write_cache_info(cache_dir, model_name_or_path, model_id, mapping, threshold)
        logger.info(
            "stuff pseudo-labels: %d of %d images cached in %s", len(items) - len(todo), len(items), cache_dir
        )
    if not todo:
        return

    import torch

    if device is None:
        device = str(state.device) if state is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if batch_size is None:
        batch_size = 1 if torch.device(device).type == "cpu" else 4

    def labeller() -> StuffLabeller:
        return StuffLabeller(model_name_or_path, mapping, threshold, device)

    run = (cache_dir, fingerprint, batch_size, load_image or default_load_image)
    if state is None:
        _label_batches(todo, labeller, *run)
        return
    with state.split_between_processes(todo) as mine:
        done = _label_batches(mine, labeller, *run)
    _merge_shards(state, todo, done, cache_dir, fingerprint)


def _merge_shards(
    state: Any, todo: Sequence[tuple[str, Path]], done: list[str], cache_dir: Path, fingerprint: str
) -> None:
    """Main process: gather what each process labelled and check that every image is cached."""
    from accelerate.utils import gather_object

    from dataset_scripts.stuff.cache import StuffCacheError

    labelled = gather_object([done]) if state.num_processes > 1 else [done]
    state.wait_for_everyone()
    if not state.is_main_process:
        return
    merged = {key for part in labelled for key in part}
    missing = [key for key, _ in todo if key not in merged or not is_cached(cache_dir, key, fingerprint)]
    if missing:
        raise StuffCacheError(f"{cache_dir}: no process cached the stuff maps of {missing[:5]}")
    logger.info(
        "stuff pseudo-labels: %d images labelled by %d processes (%s)",
        len(merged),
        state.num_processes,
        ", ".join(str(len(part)) for part in labelled),
    )
