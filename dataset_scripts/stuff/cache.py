"""The stuff pseudo-label cache: one compressed map per image, keyed by the image, tagged with the run.

A run (model, mapping, threshold) has a fingerprint (`run_fingerprint`); each cached map carries its
image key and that fingerprint, and ``cache_info.json`` records the last run, so that `load_stuff_map`
refuses a map made by another run and `is_cached` tells what a run still has to compute. Every file is
written atomically: an interrupted run leaves whole maps only, and several processes can fill one cache
(each writes its own images' files).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from dataset_scripts.atomic_io import atomic_write_bytes, atomic_write_json
from dataset_scripts.stuff.mapping import StuffMapping

logger = logging.getLogger(__name__)

CACHE_INFO_NAME = "cache_info.json"
# Bump when the meaning of cached maps changes: every cache is then recomputed. 2: maps from the
# inference core (padding cut off the masks before post-processing, not after).
_CACHE_FORMAT = 2
_MAPS_DIR = "maps"


class StuffCacheError(RuntimeError):
    """A cached stuff map is missing, unreadable or was made with another model/mapping/threshold."""


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


def run_fingerprint(model_id: str, mapping: StuffMapping, threshold: float) -> str:
    blob = json.dumps(
        {"format": _CACHE_FORMAT, "model": model_id, "threshold": threshold, "mapping": mapping.to_dict()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_cached(path: Path) -> tuple[str, str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return str(data["key"]), str(data["fingerprint"]), data["stuff"]


def is_cached(cache_dir: Path, key: str, fingerprint: str) -> bool:
    path = cache_path(cache_dir, key)
    if not path.is_file():
        return False
    try:
        cached_key, cached_fingerprint, _ = _read_cached(path)
    except (OSError, ValueError, KeyError) as err:
        logger.warning("%s: unreadable cached stuff map for %r (%s); recomputing", path, key, err)
        return False
    return cached_key == key and cached_fingerprint == fingerprint


def write_cached(cache_dir: Path, key: str, fingerprint: str, stuff: np.ndarray) -> None:
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


def write_cache_info(
    cache_dir: Path, model_name_or_path: str, model_id: str, mapping: StuffMapping, threshold: float
) -> str:
    """Record the run in ``cache_dir/cache_info.json``; returns its fingerprint."""
    fingerprint = run_fingerprint(model_id, mapping, threshold)
    info: dict[str, Any] = {
        "model": model_name_or_path,
        "model_identity": model_id,
        "threshold": threshold,
        "mapping_source": mapping.source,
        "mapping": mapping.to_dict(),
        "fingerprint": fingerprint,
    }
    atomic_write_json(Path(cache_dir) / CACHE_INFO_NAME, info, indent=1)
    return fingerprint
