"""Stuff pseudo-labels: run a pretrained COCO panoptic DETR and map its classes to broad stuff classes.

Things are annotated by hand in CVAT; the background *stuff* (floor, wall, sky, ground...) can
instead be predicted by a pretrained COCO panoptic model (``facebook/detr-resnet-50-panoptic``)
whose COCO classes are mapped to a few broad stuff classes by a user-editable YAML file
(``configs/coco_stuff_map.yaml``: each COCO stuff class to its supercategory, every COCO thing to
``misc``). The converter pastes the CVAT things on top of the resulting stuff map.

Three layers:

- ``load_stuff_mapping`` reads and validates the YAML into a ``StuffMapping``;
- ``map_panoptic_prediction`` is the pure per-image step: a panoptic prediction (segment ids +
  segment labels) becomes a stuff map of indices into ``StuffMapping.stuff_names`` (-1 = void);
- ``pseudo_label_stuff`` is the resumable orchestrator: batched model runs, one cache file per
  image, written atomically; ``load_stuff_map`` reads one back.

The converter calls it (``cvat_to_panoptic.py --stuff-from-model``); run as a script it fills a
cache for a folder of pictures and prints the share of each stuff class, to check a mapping or
to precompute the cache on a GPU machine::

    python dataset_scripts/stuff_model.py IMAGES_DIR --cache-dir CACHE [--model PATH] [--mapping YAML]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from tqdm.auto import tqdm

from dataset_scripts.atomic_io import atomic_write_bytes, atomic_write_json
from dataset_scripts.image_io import load_upright_rgb

logger = logging.getLogger(__name__)

DEFAULT_MAPPING_PATH = Path(__file__).resolve().parent / "configs" / "coco_stuff_map.yaml"
DEFAULT_MODEL = "facebook/detr-resnet-50-panoptic"
VOID_INDEX = -1
CACHE_INFO_NAME = "cache_info.json"
_CACHE_FORMAT = 1  # bump when the meaning of cached maps changes: every cache is then recomputed
_MAPS_DIR = "maps"
_MAPPING_KEYS = {"targets", "stuff", "things", "thing_overrides", "ignore_labels"}


class StuffMappingError(ValueError):
    """The stuff mapping YAML is malformed or inconsistent (the message names the file and key)."""


class StuffModelError(RuntimeError):
    """The stuff model cannot be loaded or run (the message says which option to change)."""


class StuffCacheError(RuntimeError):
    """A cached stuff map is missing, unreadable or was made with another model/mapping/threshold."""


# ----------------------------------------------------------------------------------------------
# The mapping file
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StuffMapping:
    """Which of our stuff classes each label of the pretrained model becomes.

    Attributes:
        stuff_names: Our stuff classes, in order; stuff maps hold indices into this list.
        stuff_labels: Model stuff label name -> index into ``stuff_names`` (None = void). These
            labels are fused into one segment per image by the model's post-processing.
        things_index: Index for every other model label (COCO things), None = void.
        thing_overrides: Model label name -> index (None = void), taking precedence over
            ``things_index``.
        ignore_labels: Placeholder labels of the checkpoint ("N/A"), always void.
        source: Where the mapping was read from, for error messages.
    """

    stuff_names: list[str]
    stuff_labels: dict[str, int | None]
    things_index: int | None
    thing_overrides: dict[str, int | None] = field(default_factory=dict)
    ignore_labels: frozenset[str] = frozenset()
    source: str = "<in memory>"

    def is_stuff_label(self, label_name: str) -> bool:
        """Whether the model label is a stuff class (its instances are fused per image)."""
        return label_name in self.stuff_labels

    def index_for(self, label_name: str) -> int | None:
        """Index into ``stuff_names`` for a model label name, or None when it becomes void."""
        if label_name in self.ignore_labels:
            return None
        if label_name in self.stuff_labels:
            return self.stuff_labels[label_name]
        if label_name in self.thing_overrides:
            return self.thing_overrides[label_name]
        return self.things_index

    def to_dict(self) -> dict[str, Any]:
        """The mapping as plain JSON-able data, with target names (not indices)."""

        def name(index: int | None) -> str | None:
            return None if index is None else self.stuff_names[index]

        return {
            "targets": list(self.stuff_names),
            "stuff": {label: name(i) for label, i in sorted(self.stuff_labels.items())},
            "things": name(self.things_index),
            "thing_overrides": {label: name(i) for label, i in sorted(self.thing_overrides.items())},
            "ignore_labels": sorted(self.ignore_labels),
        }

    def fingerprint(self) -> str:
        """Hash of what the mapping does (not of the file's comments or layout)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _target_index(value: Any, targets: list[str], where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in targets:
        raise StuffMappingError(
            f"{where}: unknown target {value!r}; expected one of {targets} or null (void)"
        )
    return targets.index(value)


def _label_table(raw: Any, targets: list[str], where: str) -> dict[str, int | None]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise StuffMappingError(
            f"{where}: expected a mapping 'model label: target', got {type(raw).__name__}"
        )
    table = {}
    for label, value in raw.items():
        if not isinstance(label, str) or not label:
            raise StuffMappingError(f"{where}: label {label!r} is not a non-empty string")
        table[label] = _target_index(value, targets, f"{where}.{label}")
    return table


def load_stuff_mapping(path: str | Path | None = None) -> StuffMapping:
    """Read and validate a stuff mapping YAML (see ``configs/coco_stuff_map.yaml``).

    Args:
        path: The YAML file; None = the default shipped with the repository.

    Returns:
        The validated mapping.

    Raises:
        StuffMappingError: unreadable file, malformed YAML, unknown or missing key, a target
            that is not in ``targets``, duplicate targets, a label both in ``stuff`` and
            ``thing_overrides``. The message names the file and the offending key.
    """
    path = Path(path) if path is not None else DEFAULT_MAPPING_PATH
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise StuffMappingError(f"{path}: cannot read the stuff mapping ({err})") from err
    except yaml.YAMLError as err:
        raise StuffMappingError(f"{path}: malformed YAML ({err})") from err
    if not isinstance(raw, dict):
        raise StuffMappingError(f"{path}: expected a YAML mapping with keys {sorted(_MAPPING_KEYS)}")
    unknown = sorted(str(k) for k in set(raw) - _MAPPING_KEYS)
    if unknown:
        raise StuffMappingError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(_MAPPING_KEYS)}")
    for key in ("targets", "stuff"):
        if key not in raw:
            raise StuffMappingError(f"{path}: missing key {key!r}")

    targets = raw["targets"]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise StuffMappingError(f"{path}: 'targets' must be a non-empty list of class names")
    duplicates = sorted({t for t in targets if targets.count(t) > 1})
    if duplicates:
        raise StuffMappingError(f"{path}: 'targets' lists {duplicates} more than once")
    if len(targets) > 254:  # maps are resized as 8-bit images (index + 1)
        raise StuffMappingError(f"{path}: 'targets' has {len(targets)} classes; at most 254 are supported")

    stuff = _label_table(raw["stuff"], targets, f"{path}: stuff")
    if not stuff:
        raise StuffMappingError(f"{path}: 'stuff' is empty: list the model's stuff labels")
    things_index = _target_index(raw.get("things"), targets, f"{path}: things")
    overrides = _label_table(raw.get("thing_overrides"), targets, f"{path}: thing_overrides")
    both = sorted(set(stuff) & set(overrides))
    if both:
        raise StuffMappingError(
            f"{path}: thing_overrides {both} are stuff labels; set their target under 'stuff'"
        )
    ignore = raw.get("ignore_labels") or []
    if not isinstance(ignore, list) or not all(isinstance(label, str) for label in ignore):
        raise StuffMappingError(f"{path}: 'ignore_labels' must be a list of label names")
    clash = sorted(set(ignore) & (set(stuff) | set(overrides)))
    if clash:
        raise StuffMappingError(f"{path}: ignore_labels {clash} are also given a target elsewhere")

    used = {i for i in [*stuff.values(), *overrides.values(), things_index] if i is not None}
    unused = [t for i, t in enumerate(targets) if i not in used]
    if unused:
        logger.warning("%s: targets %s receive no label (they will never appear)", path, unused)
    return StuffMapping(
        stuff_names=list(targets),
        stuff_labels=stuff,
        things_index=things_index,
        thing_overrides=overrides,
        ignore_labels=frozenset(ignore),
        source=str(path),
    )


# ----------------------------------------------------------------------------------------------
# Pure per-image step
# ----------------------------------------------------------------------------------------------


def map_panoptic_prediction(
    segmentation: np.ndarray,
    segments_info: Sequence[dict],
    id2label: dict[int, str],
    mapping: StuffMapping,
) -> np.ndarray:
    """Turn one panoptic prediction into a stuff map.

    Args:
        segmentation: (H, W) int segment ids as returned by
            ``post_process_panoptic_segmentation`` (ids of ``segments_info``; 0 or -1 where no
            segment was kept).
        segments_info: One dict per segment with at least ``id`` and ``label_id``.
        id2label: The model's label names (``config.id2label``; int or str keys).
        mapping: The stuff mapping.

    Returns:
        (H, W) int16 indices into ``mapping.stuff_names``; -1 (void) where there is no segment or
        the segment's label maps to void.

    Raises:
        ValueError: a segment's ``label_id`` is not in ``id2label`` (model/config mismatch).
    """
    names = {int(k): v for k, v in id2label.items()}
    segmentation = np.asarray(segmentation)
    out = np.full(segmentation.shape, VOID_INDEX, dtype=np.int16)
    for seg in segments_info:
        label_id = int(seg["label_id"])
        if label_id not in names:
            raise ValueError(f"segment {seg['id']}: label id {label_id} is not in the model's id2label")
        index = mapping.index_for(names[label_id])
        if index is not None:
            out[segmentation == int(seg["id"])] = index
    return out


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------


def cache_path(cache_dir: Path, key: str) -> Path:
    """The cache file of an image key: a hash (keys may hold ``/`` etc.) plus a readable stem."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(key).stem)[:60].strip("._") or "image"
    return Path(cache_dir) / _MAPS_DIR / f"{digest}_{stem}.npz"


def model_identity(model_name_or_path: str) -> str:
    """What identifies the model in the cache: a Hub id as is; a local folder by its content.

    A folder is hashed (config, processor, weights; well under a second for DETR-R50) rather
    than named, so a cache made elsewhere (e.g. precomputed on a GPU box) is reused wherever the
    model folder lives, and a model retrained into the same folder is not taken for the old one.
    """
    folder = Path(model_name_or_path).expanduser()
    if not folder.is_dir():
        return model_name_or_path
    digest = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.suffix in {".json", ".safetensors", ".bin"}:
            digest.update(file.name.encode() + b"\0")
            with file.open("rb") as handle:
                while chunk := handle.read(1 << 22):
                    digest.update(chunk)
    return f"folder:{digest.hexdigest()}"


def _run_fingerprint(model_id: str, mapping: StuffMapping, threshold: float) -> str:
    blob = json.dumps(
        {"format": _CACHE_FORMAT, "model": model_id, "threshold": threshold, "mapping": mapping.to_dict()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_cached(path: Path) -> tuple[str, str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return str(data["key"]), str(data["fingerprint"]), data["stuff"]


def _is_cached(cache_dir: Path, key: str, fingerprint: str) -> bool:
    path = cache_path(cache_dir, key)
    if not path.is_file():
        return False
    try:
        cached_key, cached_fingerprint, _ = _read_cached(path)
    except (OSError, ValueError, KeyError) as err:
        logger.warning("%s: unreadable cached stuff map for %r (%s); recomputing", path, key, err)
        return False
    return cached_key == key and cached_fingerprint == fingerprint


def _write_cached(cache_dir: Path, key: str, fingerprint: str, stuff: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, stuff=stuff.astype(np.int16), key=np.array(key), fingerprint=np.array(fingerprint)
    )
    atomic_write_bytes(cache_path(cache_dir, key), buffer.getvalue())


def load_stuff_map(cache_dir: Path, key: str) -> np.ndarray:
    """Read the stuff map ``pseudo_label_stuff`` cached for one image.

    Args:
        cache_dir: The cache folder given to ``pseudo_label_stuff``.
        key: The image key given to ``pseudo_label_stuff``.

    Returns:
        (H, W) int16 indices into the run's ``mapping.stuff_names``, -1 = void; (H, W) is the
        upright (EXIF-applied) size of the image.

    Raises:
        StuffCacheError: no run recorded in ``cache_dir``, no map for ``key``, or a map made by a
            different model/mapping/threshold than the last run.
    """
    cache_dir = Path(cache_dir)
    info_path = cache_dir / CACHE_INFO_NAME
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise StuffCacheError(f"{info_path}: no stuff pseudo-label run recorded here ({err})") from err
    path = cache_path(cache_dir, key)
    if not path.is_file():
        raise StuffCacheError(f"{path}: no cached stuff map for image {key!r}; run pseudo_label_stuff on it")
    try:
        cached_key, fingerprint, stuff = _read_cached(path)
    except (OSError, ValueError, KeyError) as err:
        raise StuffCacheError(f"{path}: unreadable cached stuff map for image {key!r} ({err})") from err
    if cached_key != key:
        raise StuffCacheError(f"{path}: holds image {cached_key!r}, not {key!r} (hash collision?)")
    if fingerprint != info.get("fingerprint"):
        raise StuffCacheError(
            f"{path}: stuff map of image {key!r} was made with another model, mapping or threshold than "
            f"the last run recorded in {info_path}; rerun pseudo_label_stuff"
        )
    return stuff


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


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


def load_stuff_model(model_name_or_path: str, device: str) -> tuple[Any, Any, str]:
    """Load the image processor and ``DetrForSegmentation`` from a folder or the Hub.

    A Hub id is first looked up in the local Hugging Face cache; only when absent is the Hub
    asked, with one short request, so that an offline machine fails within seconds instead of
    retrying downloads for minutes.

    Returns:
        ``(processor, model in eval mode on device, source)``: ``source`` is the resolved
        folder or the Hub id the files were read from.

    Raises:
        StuffModelError: missing folder, unreachable Hub, or a checkpoint that is not a panoptic
            ``DetrForSegmentation`` with a processor.
    """
    import huggingface_hub
    from huggingface_hub import constants as hub_constants
    from transformers import AutoImageProcessor, DetrForSegmentation

    local = Path(model_name_or_path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise StuffModelError(
                f"{local}: the stuff model must be a folder (config.json, weights, processor)"
            )
        source, kwargs = str(local.resolve()), {}
    else:
        if model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1:
            raise StuffModelError(f"{model_name_or_path}: no such stuff model folder")
        source, kwargs = model_name_or_path, {"local_files_only": True}
        try:  # already in the Hugging Face cache?
            huggingface_hub.snapshot_download(model_name_or_path, local_files_only=True)
        except Exception:  # any failure means "not cached": ask the Hub below
            if hub_constants.HF_HUB_OFFLINE:
                raise StuffModelError(_offline_message(model_name_or_path, "HF_HUB_OFFLINE is set")) from None
            try:
                huggingface_hub.model_info(model_name_or_path, timeout=10)
            except Exception as err:  # network errors come from several libraries
                raise StuffModelError(
                    _offline_message(model_name_or_path, str(err) or type(err).__name__)
                ) from err
            kwargs = {}
    try:
        processor = AutoImageProcessor.from_pretrained(source, **kwargs)
        model = DetrForSegmentation.from_pretrained(source, **kwargs)
    except OSError as err:
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
    return processor, model.to(device).eval(), source


def _stuff_label_ids(id2label: dict[int, str], mapping: StuffMapping, model_name: str) -> set[int]:
    """The model's label ids that are stuff per the mapping (fused per image)."""
    ids = {int(i) for i, name in id2label.items() if mapping.is_stuff_label(name)}
    if not ids:
        raise StuffModelError(
            f"{model_name}: none of its labels (e.g. {sorted(id2label.values())[:5]}) is a stuff label of "
            f"{mapping.source}; is it a COCO panoptic model, or does the mapping need its label names?"
        )
    missing = sorted(set(mapping.stuff_labels) - set(id2label.values()))
    if missing:
        logger.warning("%s: stuff labels not among the model's labels: %s", mapping.source, missing)
    return ids


def _predict_batch(
    images: list[Image.Image],
    processor: Any,
    model: Any,
    mapping: StuffMapping,
    label_ids_to_fuse: set[int],
    threshold: float,
    device: str,
) -> list[np.ndarray]:
    """Run the model on a batch and return one (H, W) int16 stuff map per upright image."""
    import torch

    inputs = processor(images=images, return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(device)
    pixel_mask = inputs.get("pixel_mask")  # absent when the processor does not pad
    pixel_mask = torch.ones_like(pixel_values[:, 0]) if pixel_mask is None else pixel_mask.to(device)
    with torch.inference_mode():
        outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    # Post-process at the network's input size (the masks are at 1/4 of it anyway) and resize
    # the small label map afterwards: interpolating every query mask to a 40-Mpx photo would
    # need gigabytes. The images of a batch are padded (bottom/right) to the largest one and the
    # masks cover that canvas: resize them to the padded size, then crop each image's part
    # (resizing the whole canvas to the image's size would stretch the padding over it).
    padded_size = tuple(pixel_values.shape[-2:])
    results = processor.post_process_panoptic_segmentation(
        outputs,
        threshold=threshold,
        target_sizes=[padded_size] * len(images),
        label_ids_to_fuse=label_ids_to_fuse,
    )
    maps = []
    for image, result, valid in zip(images, results, pixel_mask.bool(), strict=True):
        h, w = int(valid.any(1).sum()), int(valid.any(0).sum())
        segmentation = result["segmentation"][:h, :w].cpu().numpy()
        small = map_panoptic_prediction(segmentation, result["segments_info"], model.config.id2label, mapping)
        shifted = Image.fromarray((small + 1).astype(np.uint8))  # void -1 -> 0: fits an 8-bit image
        full = np.asarray(shifted.resize(image.size, Image.Resampling.NEAREST), dtype=np.int16) - 1
        maps.append(full)
    return maps


def pseudo_label_stuff(
    items: Sequence[tuple[str, Path]],
    model_name_or_path: str,
    mapping: StuffMapping,
    cache_dir: Path,
    batch_size: int | None = None,
    device: str | None = None,
    load_image: Callable[[Path], Image.Image] | None = None,
    threshold: float = 0.85,
) -> None:
    """Predict and cache a stuff map for every image not cached yet (resumable).

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
        batch_size: Images per forward pass; None = 4 on a GPU, 1 on CPU (where each
            ~800x1300 picture needs ~15 GB in the mask head and batching is not faster).
        device: Torch device; None = ``cuda`` when available, else ``cpu``.
        load_image: Decodes an image upright in RGB; default ``default_load_image``.
        threshold: Minimum class score of a predicted segment (DETR's 0.85).

    Raises:
        ValueError: duplicate keys or ``batch_size`` < 1.
        StuffModelError: the model cannot be loaded (offline Hub id, wrong checkpoint).
        ConversionError: an image cannot be decoded (from the default ``load_image``; earlier
            batches stay cached). A custom ``load_image`` may raise its own errors (e.g. ``OSError``).
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    duplicates = sorted(key for key, n in Counter(key for key, _ in items).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate image keys for stuff pseudo-labels: {duplicates[:5]}")
    cache_dir = Path(cache_dir)
    load_image = load_image or default_load_image
    model_id = model_identity(model_name_or_path)
    fingerprint = _run_fingerprint(model_id, mapping, threshold)
    atomic_write_json(
        cache_dir / CACHE_INFO_NAME,
        {
            "model": model_name_or_path,
            "model_identity": model_id,
            "threshold": threshold,
            "mapping_source": mapping.source,
            "mapping": mapping.to_dict(),
            "fingerprint": fingerprint,
        },
        indent=1,
    )
    todo = [(key, Path(path)) for key, path in items if not _is_cached(cache_dir, key, fingerprint)]
    logger.info(
        "stuff pseudo-labels: %d of %d images cached in %s", len(items) - len(todo), len(items), cache_dir
    )
    if not todo:
        return

    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if batch_size is None:
        batch_size = 1 if torch.device(device).type == "cpu" else 4
    if torch.device(device).type == "cpu" and batch_size > 1:
        # Measured: DETR-R50's mask head peaks at ~15 GB of RAM for one 800x1286 input on CPU
        # (100 query masks at 1/4 resolution); a batch multiplies that and is not faster on CPU.
        logger.warning(
            "stuff model on CPU with batch size %d: each ~800x1300 picture needs ~15 GB of RAM in DETR's "
            "mask head and batching does not speed up CPU inference; use batch size 1 if memory runs out",
            batch_size,
        )
    processor, model, _ = load_stuff_model(model_name_or_path, device)
    label_ids_to_fuse = _stuff_label_ids(model.config.id2label, mapping, model_name_or_path)
    with tqdm(total=len(todo), desc="stuff pseudo-labels", unit="img") as progress:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            images = [load_image(path) for _, path in batch]
            maps = _predict_batch(images, processor, model, mapping, label_ids_to_fuse, threshold, device)
            for (key, _), stuff in zip(batch, maps, strict=True):
                _write_cached(cache_dir, key, fingerprint, stuff)
            progress.update(len(batch))


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def collect_images(paths: Sequence[Path]) -> list[tuple[str, Path]]:
    """``(key, path)`` for picture files and the pictures in folders (recursive), sorted.

    The key is the base name, as the converter's (``cvat_to_panoptic.py``), so a cache filled
    here is reused by a conversion with the same model, mapping and threshold.

    Raises:
        ValueError: a path does not exist, or two pictures share a base name.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such file or folder")
    by_name: dict[str, Path] = {}
    for file in sorted(files):
        if file.name in by_name:
            raise ValueError(f"{by_name[file.name]} and {file} share the name {file.name!r} (the cache key)")
        by_name[file.name] = file
    return sorted(by_name.items())


def class_shares(
    cache_dir: Path, keys: Sequence[str], stuff_names: Sequence[str]
) -> list[tuple[str, int, float]]:
    """Per class (and ``void``): number of images containing it and share of all pixels (%)."""
    pixels = np.zeros(len(stuff_names) + 1, dtype=np.int64)  # index 0 = void
    images = np.zeros_like(pixels)
    for key in keys:
        counts = np.bincount(load_stuff_map(cache_dir, key).ravel() + 1, minlength=len(pixels))
        pixels += counts
        images += counts > 0
    total = max(int(pixels.sum()), 1)
    names = ["void", *stuff_names]
    return [(names[i], int(images[i]), 100.0 * pixels[i] / total) for i in range(len(names))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "images", nargs="+", type=Path, help="picture files or folders (searched recursively)"
    )
    parser.add_argument("--cache-dir", type=Path, required=True, help="folder of the cached stuff maps")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="Hub id or local folder (default: %(default)s)"
    )
    parser.add_argument(
        "--mapping", type=Path, default=None, help=f"mapping YAML (default: {DEFAULT_MAPPING_PATH})"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="pictures per forward pass (default: 4 on a GPU, 1 on CPU)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )
    parser.add_argument("--threshold", type=float, default=0.85, help="minimum segment score (default: 0.85)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        mapping = load_stuff_mapping(args.mapping)
        items = collect_images(args.images)
        if not items:
            raise ValueError(
                f"no pictures ({', '.join(sorted(IMAGE_SUFFIXES))}) in {[str(p) for p in args.images]}"
            )
        pseudo_label_stuff(
            items,
            args.model,
            mapping,
            args.cache_dir,
            batch_size=args.batch_size,
            device=args.device,
            threshold=args.threshold,
        )
        shares = class_shares(args.cache_dir, [key for key, _ in items], mapping.stuff_names)
    except (StuffMappingError, StuffModelError, StuffCacheError, ValueError, OSError) as err:
        logger.error("%s", err)
        return 2
    logger.info("stuff classes over %d images (%s):", len(items), args.cache_dir)
    logger.info("%-14s %7s %8s", "class", "images", "pixels%")
    for name, n_images, share in shares:
        if n_images:
            logger.info("%-14s %7d %8.2f", name, n_images, share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
