"""The stuff mapping: which of our broad stuff classes each label of a pretrained panoptic model becomes.

``load_stuff_mapping`` reads and validates the user-editable YAML (``configs/coco_stuff_map.yaml``: each
COCO stuff class to its supercategory, every COCO thing to ``misc``) into a ``StuffMapping``;
``map_panoptic_prediction`` is the pure per-image step: a panoptic prediction (segment ids + segment
labels) becomes a stuff map of indices into ``StuffMapping.stuff_names`` (-1 = void).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dataset_scripts.coco_panoptic import coco_panoptic_name

logger = logging.getLogger(__name__)

DEFAULT_MAPPING_PATH = Path(__file__).resolve().parents[1] / "configs" / "coco_stuff_map.yaml"
VOID_INDEX = -1
_MAPPING_KEYS = {"targets", "stuff", "things", "thing_overrides", "ignore_labels"}


class StuffMappingError(ValueError):
    """The stuff mapping YAML is malformed or inconsistent (the message names the file and key)."""


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
            f"{where}: expected a mapping 'model label (or COCO-panoptic id): target', got {type(raw).__name__}"
        )
    table = {}
    for label, value in raw.items():
        if isinstance(label, int) and not isinstance(label, bool):  # a COCO-panoptic category id
            name = coco_panoptic_name(label)
            if name is None:
                raise StuffMappingError(f"{where}: {label} is not a COCO-panoptic category id (1-200)")
            label = name
        if not isinstance(label, str) or not label:
            raise StuffMappingError(f"{where}: label {label!r} is not a non-empty string or a category id")
        if label in table:
            raise StuffMappingError(f"{where}: {label!r} is given twice (by name and by id?)")
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
