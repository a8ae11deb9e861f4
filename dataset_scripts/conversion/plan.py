"""Decide what a conversion produces before any pixel is touched: categories, pictures, names, splits.

Everything here is cheap and pure (it only looks files up): the orchestrator (`converter`) calls it,
then hands one `conversion.ImageJob` per picture to the workers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dataset_scripts.conversion.report import (
    EMPTY_LABEL,
    MISSING_IMAGE,
    NOT_IN_VAL,
    RENAMED,
    UNANNOTATED,
    UNUSED_LABEL,
    ReportWarning,
)
from dataset_scripts.conversion.splits import assign_splits, subset_split
from dataset_scripts.cvat.records import MASK_KINDS, ConversionError, Export, ImageRecord
from dataset_scripts.preview import distinct_colors

# Label names that usually mean stuff (amorphous background): a label with such a word in its name,
# converted as a thing because no --stuff-labels / --stuff-from-model says otherwise, is warned about.
STUFF_LIKE_WORDS = frozenset(
    {
        "asphalt",
        "ceiling",
        "concrete",
        "dirt",
        "floor",
        "grass",
        "gravel",
        "ground",
        "mud",
        "pavement",
        "road",
        "sand",
        "sidewalk",
        "sky",
        "snow",
        "soil",
        "terrain",
        "vegetation",
        "wall",
        "water",
    }
)
SPLIT_ORDER = ("train", "val", "test")


def stuff_like_things(categories: Sequence[dict[str, Any]]) -> list[str]:
    """Names of thing categories that look like stuff (a word of `STUFF_LIKE_WORDS`: ``floor``, ``brick_wall``)."""
    return [
        cat["name"]
        for cat in categories
        if cat["isthing"] and STUFF_LIKE_WORDS & set(re.split(r"[^a-z0-9]+", cat["name"].casefold()))
    ]


def preview_spread(pictures: Sequence[tuple[str, str, frozenset[int]]], count: int) -> list[int]:
    """Which pictures to preview so that a few of them show every class and every split.

    Splits take turns (train, val, test); in its turn a split gives the picture that adds the most
    classes not shown yet (then the one with the most classes, then the first by name).

    Args:
        pictures: ``(name, split, category ids)`` per converted picture.
        count: How many previews at most.

    Returns:
        Indices into ``pictures``, in the order chosen.
    """
    pools: dict[str, list[int]] = {}
    for index in sorted(range(len(pictures)), key=lambda i: pictures[i][0]):
        pools.setdefault(pictures[index][1], []).append(index)
    turns = [s for s in SPLIT_ORDER if s in pools] + sorted(set(pools) - set(SPLIT_ORDER))
    shown: set[int] = set()
    chosen: list[int] = []
    while len(chosen) < min(count, len(pictures)):
        for split in turns:
            pool = pools[split]
            if not pool or len(chosen) >= count:
                continue
            best = max(pool, key=lambda i: (len(pictures[i][2] - shown), len(pictures[i][2])))
            pool.remove(best)
            chosen.append(best)
            shown |= pictures[best][2]
    return chosen


def drop_empty_labels(images: dict[str, ImageRecord], skip: bool) -> list[ReportWarning]:
    """Refuse (or, with ``skip``, drop and report) annotations whose label is empty or blank.

    A blank label is never a class: CVAT allows ``label=""`` in a hand-edited or scripted export,
    and a category named ``""`` would silently train a nameless class.

    Raises:
        ConversionError: the first annotation with a blank label, unless ``skip``.
    """
    warnings = []
    for key, record in sorted(images.items()):
        kept = []
        for shape in record.shapes:
            if shape.label.strip():
                kept.append(shape)
                continue
            where = f"{shape.source}: image {record.image_id} ({record.file_name}), annotation {shape.annotation_id}"
            if not skip:
                raise ConversionError(
                    f"{where}: empty label {shape.label!r} (fix it in CVAT, or pass --skip-empty-labels)"
                )
            warnings.append(
                ReportWarning(EMPTY_LABEL, shape.source, key, shape.annotation_id, "empty label: skipped")
            )
        record.shapes = kept
    return warnings


def keep_every_nth_frame(images: dict[str, ImageRecord], step: int) -> dict[str, ImageRecord]:
    """The images without the video frames that ``--frame-step`` leaves out.

    A frame is kept when its position in its video (`ImageRecord.frame_index`, in the task's frame
    steps) is a multiple of ``step``; pictures that are no video frame are always kept.
    """
    if step == 1:
        return images
    return {
        key: record
        for key, record in images.items()
        if record.frame_index is None or record.frame_index % step == 0
    }


def subset_splits(images: dict[str, ImageRecord], keys: Sequence[str]) -> dict[str, str]:
    """The split of every image from its CVAT subset (``--splits-from-subsets``).

    Raises:
        ConversionError: an image without a subset, or a subset that names no split (all named).
    """
    split_of: dict[str, str] = {}
    unknown: dict[str, str] = {}
    for key in keys:
        record = images[key]
        split = subset_split(record.subset)
        if split is None:  # a task export has no subset: name it so that the message says so
            unknown.setdefault(record.subset or "(no subset: not a project export)", record.source)
        else:
            split_of[key] = split
    if unknown:
        names = ", ".join(f"{name!r} ({source})" for name, source in sorted(unknown.items()))
        raise ConversionError(
            f"--splits-from-subsets: subset(s) {names} name no split; CVAT subsets must be Train, "
            "Validation (or Val) or Test"
        )
    return split_of


def build_categories(
    exports: Sequence[Export],
    images: dict[str, ImageRecord],
    stuff_labels: Sequence[str],
    model_stuff: Sequence[str],
) -> tuple[list[dict[str, Any]], list[ReportWarning]]:
    """The output categories: ids 1..K, things (by name) then stuff (by name).

    Things are the labels with at least one mask-carrying shape that are not stuff; stuff is every
    ``--stuff-labels`` label plus the model's stuff classes. Labels with no mask (tags, box-only
    labels, unused ones) are reported and get no category.

    Raises:
        ConversionError: a stuff label that no export declares, or a model stuff class that is a
            CVAT thing label.
    """
    known: list[str] = []
    declared_in: dict[str, str] = {}
    supercategory: dict[str, str] = {}
    for export in exports:
        for label in export.labels:
            if label.strip() and label not in declared_in:  # a blank label is never a class
                known.append(label)
                declared_in[label] = export.source
        for label, sup in export.label_supercategories.items():
            supercategory.setdefault(label, sup)
    unknown = [label for label in stuff_labels if label not in declared_in]
    if unknown:
        raise ConversionError(
            f"--stuff-labels: unknown label(s) {', '.join(map(repr, unknown))}; known labels: "
            + ", ".join(map(repr, known))
        )
    with_masks = {
        shape.label for image in images.values() for shape in image.shapes if shape.kind in MASK_KINDS
    }
    stuff = set(stuff_labels) | set(model_stuff)
    clash = sorted((with_masks - set(stuff_labels)) & set(model_stuff))
    if clash:
        raise ConversionError(
            f"label(s) {', '.join(map(repr, clash))} are CVAT things and also stuff classes of the model; "
            "name them in --stuff-labels or rename them"
        )
    things = sorted(with_masks - stuff)
    warnings = [
        ReportWarning(
            UNUSED_LABEL, declared_in[label], "", "", f"label '{label}' has no mask annotation: no category"
        )
        for label in known
        if label not in with_masks and label not in stuff
    ]
    names = [(name, True) for name in things] + [(name, False) for name in sorted(stuff)]
    colors = distinct_colors(len(names))
    categories = [
        {
            "id": index + 1,
            "name": name,
            "isthing": int(isthing),
            "color": colors[index],
            "supercategory": supercategory.get(name, "thing" if isthing else "stuff"),
        }
        for index, (name, isthing) in enumerate(names)
    ]
    return categories, warnings


def _flat_name(key: str) -> str:
    """``cam1/0001.jpg`` -> ``cam1__0001.jpg`` (``..`` and the root dropped)."""
    parts = [part for part in PurePosixPath(key).parts if part not in ("/", "..", ".")]
    return "__".join(parts) or "image"


def output_names(keys: Sequence[str]) -> dict[str, str]:
    """A unique flat output file name per image key.

    The base name when no other picture has the same stem (so the output and the stuff cache keys
    are unchanged for ordinary exports), else the folders joined with ``__``, and a ``-N`` suffix
    if that is still taken. Stems are compared case-insensitively because the panoptic PNG is
    named ``<stem>.png`` and file systems may ignore case.
    """
    stems: dict[str, int] = {}
    for key in keys:
        stem = PurePosixPath(key).stem.casefold()
        stems[stem] = stems.get(stem, 0) + 1
    names: dict[str, str] = {}
    taken: set[str] = set()
    for key in sorted(keys):
        base = PurePosixPath(key).name
        name = base if stems[PurePosixPath(key).stem.casefold()] == 1 else _flat_name(key)
        stem, suffix = PurePosixPath(name).stem, PurePosixPath(name).suffix
        number = 1
        while PurePosixPath(name).stem.casefold() in taken:
            number += 1
            name = f"{stem}-{number}{suffix}"
        taken.add(PurePosixPath(name).stem.casefold())
        names[key] = name
    return names


@dataclass
class PicturePlan:
    """The pictures to convert: path and output name per image key, and what was skipped."""

    paths: dict[str, Path] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    warnings: list[ReportWarning] = field(default_factory=list)


def plan_pictures(images: dict[str, ImageRecord], skip_missing: bool, need_masks: bool) -> PicturePlan:
    """Resolve every picture file and give it a unique output name.

    Args:
        images: Merged images by key.
        skip_missing: Report missing pictures instead of failing.
        need_masks: Skip (and report) images without a mask annotation.

    Raises:
        ConversionError: a missing picture (unless ``skip_missing``), a picture outside the export,
            or nothing left to convert.
    """
    plan = PicturePlan()
    for key, record in sorted(images.items()):
        path = record.resolve()
        if path is None:
            message = f"image file not found (looked in {', '.join(map(str, record.search_dirs))})"
            if not skip_missing:
                raise ConversionError(
                    f"{record.source}: image {record.image_id} ({record.file_name}): {message}"
                )
            plan.warnings.append(ReportWarning(MISSING_IMAGE, record.source, key, "", message + ": skipped"))
            continue
        if need_masks and not any(s.kind in MASK_KINDS for s in record.shapes):
            plan.warnings.append(
                ReportWarning(UNANNOTATED, record.source, key, "", "no mask annotation: skipped")
            )
            continue
        plan.paths[key] = path
    if not plan.paths:
        raise ConversionError(_nothing_left(images))
    plan.names = output_names(list(plan.paths))
    for key, name in plan.names.items():
        suffix = plan.paths[key].suffix
        if images[key].alternates and suffix != PurePosixPath(name).suffix:
            # The picture was found under an alternate name (an older CVAT's frame_000012.jpg):
            # the output keeps the file's own extension (stems, hence uniqueness, are unchanged).
            plan.names[key] = PurePosixPath(name).stem + suffix
    for key, name in plan.names.items():
        if name != PurePosixPath(key).name:
            record = images[key]
            plan.warnings.append(
                ReportWarning(
                    RENAMED,
                    record.source,
                    key,
                    "",
                    f"another picture has the same name: written as {name}",
                )
            )
    return plan


def _nothing_left(images: dict[str, ImageRecord]) -> str:
    """Why no picture is left: the annotation files, and the kinds of shapes they hold instead."""
    if not images:
        return "no image left to convert: the exports list no image (or --frame-step left none)"
    sources = sorted({record.source for record in images.values()})
    kinds: dict[str, int] = {}
    for record in images.values():
        for shape in record.shapes:
            kind = shape.detail or shape.kind
            kinds[kind] = kinds.get(kind, 0) + 1
    held = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())) or "no annotation"
    return (
        f"{', '.join(sources) or 'the exports'}: no image left to convert: {len(images)} image(s), all "
        f"missing or without a mask-carrying annotation (polygon, mask, RLE, ellipse); they hold {held}"
    )


def plan_splits(
    image_classes: dict[str, set[str]],
    val_ratio: float,
    test_ratio: float,
    seed: int,
    units: dict[str, str] | None = None,
) -> tuple[dict[str, str], list[ReportWarning]]:
    """Split per image key and the ``class_not_in_val`` warnings (see `splits.assign_splits`).

    Args:
        image_classes: Classes per image key.
        val_ratio: Fraction of ``val``.
        test_ratio: Fraction of ``test``.
        seed: Split seed.
        units: The unit each key is split with (a video's frame range): the units are split,
            with the classes of all their images, and every image goes where its unit goes.
            Default: every image is its own unit.
    """
    units = units or {}
    unit_of = {key: units.get(key, key) for key in image_classes}
    unit_classes: dict[str, set[str]] = {}
    for key, classes in image_classes.items():
        unit_classes.setdefault(unit_of[key], set()).update(classes)
    unit_split = assign_splits(unit_classes, val_ratio, test_ratio, seed)
    split_of = {key: unit_split[unit_of[key]] for key in image_classes}
    return split_of, split_warnings(image_classes, split_of, val_ratio, test_ratio)


def split_warnings(
    image_classes: dict[str, set[str]], split_of: dict[str, str], val_ratio: float, test_ratio: float
) -> list[ReportWarning]:
    """A ``class_not_in_val`` warning per class with 2+ images and none in a non-empty split."""
    counts: dict[str, int] = {}
    for classes in image_classes.values():
        for c in classes:
            counts[c] = counts.get(c, 0) + 1
    warnings = []
    for split, ratio in (("val", val_ratio), ("test", test_ratio)):
        present = {c for key, classes in image_classes.items() if split_of[key] == split for c in classes}
        for label in sorted(c for c, n in counts.items() if ratio > 0 and n >= 2 and c not in present):
            message = f"class '{label}' ({counts[label]} images) has no image in {split}"
            warnings.append(ReportWarning(NOT_IN_VAL, "", "", "", message))
    return warnings
