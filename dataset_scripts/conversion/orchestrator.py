"""The conversion orchestrator: CVAT exports in, one COCO-panoptic folder (train/val/test) out.

Pipeline: read and merge exports (`dataset_scripts.cvat.exports`) -> plan categories, pictures, output
names and splits (`dataset_scripts.conversion.plan`) -> optional model stuff maps
(`dataset_scripts.stuff_model`) -> per picture, in worker processes (`dataset_scripts.conversion.workers`):
`dataset_scripts.conversion.image.convert_image` -> split JSONs, previews, ``report.json``.

Everything is built in a hidden temporary sibling of the output folder and renamed at the end
(`dataset_scripts.atomic_io.atomic_directory`): on a user error, an interrupt or a kill nothing is half-written
(a killed run's temporary folder is removed by the next run on the same output).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dataset_scripts.atomic_io import atomic_directory, atomic_write_json
from dataset_scripts.conversion.image import ImageJob, ImageResult, convert_image, panoptic_png_name
from dataset_scripts.conversion.interrupts import raise_if_interrupted
from dataset_scripts.conversion.plan import (
    build_categories,
    drop_empty_labels,
    keep_every_nth_frame,
    plan_pictures,
    plan_splits,
    preview_spread,
    split_warnings,
    stuff_like_things,
    subset_splits,
)
from dataset_scripts.conversion.rasterize import CategoryRef
from dataset_scripts.conversion.report import ClassStats, ConversionReport, ReportWarning
from dataset_scripts.conversion.splits import RANGES_PER_VIDEO, frame_ranges
from dataset_scripts.conversion.workers import run_jobs
from dataset_scripts.cvat.exports import merge_images, read_export
from dataset_scripts.cvat.records import MASK_KINDS, ConversionError, ImageRecord
from dataset_scripts.image_io import UprightImageLoader
from dataset_scripts.panoptic_format import read_panoptic_png

logger = logging.getLogger("cvat_to_panoptic")

PREVIEW_MAX_SIDE = 1024


@dataclass
class ConversionOptions:
    """Options of `convert_exports` (the CLI flags of the same names).

    Attributes:
        stuff_labels: CVAT labels that are stuff (one segment per class per image).
        stuff_from_model: Model (hub name or folder) predicting stuff under the CVAT shapes.
        stuff_map: Mapping file for `stuff_model.load_stuff_mapping` (None: its default).
        stuff_cache: Folder of the model's per-image stuff maps (default ``OUT.stuff-cache``).
        stuff_batch_size: Batch size of the stuff model (None: 4 on a GPU, 1 on CPU).
        stuff_device: Device of the stuff model (None: automatic).
        keep_crowd: Keep the export's crowd flag (CVAT sets it on every brush mask).
        overlap: ``area`` (smaller region wins when z-order is equal/lost) or ``order``.
        val_ratio: Fraction of images in ``val``.
        test_ratio: Fraction of images in ``test``.
        seed: Split seed.
        num_workers: Worker processes (1: in this process).
        preview: Number of colour overlays written to ``OUT/preview/<split>_<name>.png``, chosen
            by `dataset_scripts.conversion.plan.preview_spread` to show every class and split.
        skip_missing_images: Report missing picture files instead of failing.
        overwrite: Replace an existing output folder.
        image_dirs: Extra folders searched for pictures (after the export's own); pictures named
            by a path that leaves the export are only read from these folders.
        subset_splits: The CVAT subsets of a project export are the splits (``Train`` -> train,
            ``Validation``/``Val`` -> val, ``Test`` -> test) instead of a seeded random split.
        frame_step: Keep every N-th frame of a video.
        video_split: ``ranges`` (default): a video's frames are split in contiguous ranges, so that
            near-identical neighbours do not leak from train into val; ``random``: frame by frame.
        skip_empty_labels: Skip (and report) annotations with an empty label instead of failing.
    """

    stuff_labels: Sequence[str] = ()
    stuff_from_model: str | None = None
    stuff_map: Path | None = None
    stuff_cache: Path | None = None
    stuff_batch_size: int | None = None
    stuff_device: str | None = None
    keep_crowd: bool = False
    overlap: str = "area"
    val_ratio: float = 0.2
    test_ratio: float = 0.0
    seed: int = 0
    num_workers: int = 1
    preview: int = 0
    skip_missing_images: bool = False
    overwrite: bool = False
    image_dirs: Sequence[Path] = ()
    subset_splits: bool = False
    frame_step: int = 1
    video_split: str = "ranges"
    skip_empty_labels: bool = False


def _check_options(exports: Sequence[Path], out_dir: Path, options: ConversionOptions) -> None:
    """Refuse bad options and an output folder that cannot be written, before any work."""
    if out_dir.exists() and not options.overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass --overwrite to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConversionError(f"--output-dir {out_dir}: exists and is not a folder")
    if options.overlap not in ("area", "order"):
        raise ConversionError(f"--overlap must be 'area' or 'order', got {options.overlap!r}")
    if (
        not 0 <= options.val_ratio < 1
        or not 0 <= options.test_ratio < 1
        or options.val_ratio + options.test_ratio >= 1
    ):
        raise ConversionError(
            f"--val-ratio {options.val_ratio} and --test-ratio {options.test_ratio} must be in [0, 1) with a sum < 1"
        )
    if options.num_workers < 1 or options.preview < 0:
        raise ConversionError("--num-workers must be >= 1 and --preview >= 0")
    if options.frame_step < 1:
        raise ConversionError(f"--frame-step must be >= 1, got {options.frame_step}")
    if options.video_split not in ("ranges", "random"):
        raise ConversionError(f"--video-split must be 'ranges' or 'random', got {options.video_split!r}")
    if not exports:
        raise ConversionError("no export given (--cvat)")
    ancestor = out_dir.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConversionError(f"--output-dir {out_dir}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConversionError(f"--output-dir {out_dir}: folder {ancestor} is not writable")


def _warn_stuff_like_things(categories: list[dict[str, Any]], options: ConversionOptions) -> None:
    """Warn when no stuff option is given but some labels, converted as things, look like stuff."""
    names = stuff_like_things(categories)
    if names and not options.stuff_labels and not options.stuff_from_model:
        logger.warning(
            "warning: label(s) %s look like stuff but are converted as things (one segment per shape); "
            "if they are stuff, pass --stuff-labels %s (or --stuff-from-model)",
            ", ".join(names),
            " ".join(names),
        )


def _stuff_cache_dir(out_dir: Path, options: ConversionOptions) -> Path:
    base = options.stuff_cache or out_dir.parent / f"{out_dir.name}.stuff-cache"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(options.stuff_from_model)).strip("_")
    return Path(base) / slug


def _run_stuff_model(
    items: list[tuple[str, Path]], cache: Path, mapping: Any, options: ConversionOptions
) -> None:
    """Fill the stuff cache; on failure keep it only when it holds maps (a rerun resumes from them).

    Raises:
        ConversionError: the model run failed (the message says whether maps were kept).
    """
    from dataset_scripts.stuff_model import StuffModelError, pseudo_label_stuff

    created = [folder for folder in (cache.parent, cache) if not folder.exists()]
    cache.mkdir(parents=True, exist_ok=True)
    logger.info("stuff maps from %s (cache %s, kept after the run)", options.stuff_from_model, cache)
    try:
        pseudo_label_stuff(
            items,
            options.stuff_from_model,
            mapping,
            cache,
            batch_size=options.stuff_batch_size,
            device=options.stuff_device,
            load_image=UprightImageLoader(),
        )
    except (StuffModelError, OSError, ValueError) as err:
        maps = list(cache.rglob("*.npz"))
        if maps:
            kept = f"the {len(maps)} stuff maps computed so far are kept in {cache} so that a rerun resumes"
        else:  # remove only what this run created, and only when it holds no map
            for folder in reversed(created):
                shutil.rmtree(folder, ignore_errors=True)
            kept = "no stuff map was written"
        raise ConversionError(f"--stuff-from-model {options.stuff_from_model}: {err} ({kept})") from err


def _split_document(chosen: list[ImageResult], categories: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "info": {"description": "converted from CVAT by dataset_scripts/cvat_to_panoptic.py"},
        "licenses": [],
        "images": [
            {"id": r.image_id, "file_name": r.name, "width": r.width, "height": r.height} for r in chosen
        ],
        "annotations": [
            {"image_id": r.image_id, "file_name": panoptic_png_name(r.name), "segments_info": r.segments_info}
            for r in chosen
        ],
        "categories": categories,
    }


def _write_previews(
    out_root: Path, results: list[ImageResult], categories: list[dict[str, Any]], count: int
) -> None:
    from dataset_scripts.preview import draw_panoptic_overlay

    by_id = {cat["id"]: cat for cat in categories}
    spread = preview_spread(
        [(r.name, r.split, frozenset(s["category_id"] for s in r.segments_info)) for r in results], count
    )
    for result in (results[index] for index in spread):
        with Image.open(out_root / result.split / result.name) as img:
            image = img.convert("RGB")
        ids = read_panoptic_png(
            out_root / "annotations" / f"panoptic_{result.split}" / panoptic_png_name(result.name)
        )
        scale = PREVIEW_MAX_SIDE / max(image.size)
        if scale < 1:  # big photos: draw on a reduced copy (nearest-neighbour for the ids)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
            ids = np.asarray(Image.fromarray(ids.astype(np.int32)).resize(size, Image.Resampling.NEAREST))
        segments = [
            {
                "id": seg["id"],
                "name": by_id[seg["category_id"]]["name"],
                "color": tuple(by_id[seg["category_id"]]["color"]),
                "isthing": bool(by_id[seg["category_id"]]["isthing"]),
            }
            for seg in result.segments_info
        ]
        overlay = draw_panoptic_overlay(image, ids, segments)
        (out_root / "preview").mkdir(exist_ok=True)
        overlay.convert("RGB").save(out_root / "preview" / f"{result.split}_{panoptic_png_name(result.name)}")


def _write_outputs(
    tmp: Path, results: list[ImageResult], report: ConversionReport, options: ConversionOptions
) -> None:
    for split in ("train", "val", "test"):
        chosen = [r for r in results if r.split == split]
        if chosen:
            report.splits[split] = len(chosen)
            atomic_write_json(
                tmp / "annotations" / f"panoptic_{split}.json", _split_document(chosen, report.categories)
            )
    for result in results:
        report.warnings.extend(result.warnings)
        report.add_segments(result.name, result.segments_info)
    if options.preview > 0:
        _write_previews(tmp, results, report.categories, options.preview)
    atomic_write_json(tmp / "report.json", report.to_json(), indent=2)


def _image_classes(images: dict[str, ImageRecord], keys: Sequence[str], refs: dict[str, CategoryRef]) -> dict:
    return {
        key: {s.label for s in images[key].shapes if s.kind in MASK_KINDS and s.label in refs} for key in keys
    }


def _split(
    images: dict[str, ImageRecord], keys: Sequence[str], refs: dict[str, CategoryRef], options: ConversionOptions
) -> tuple[dict[str, str], list[ReportWarning], str]:
    """The split of every picture, its warnings and a sentence saying how it was made (for the report)."""
    classes = _image_classes(images, keys, refs)
    if options.subset_splits:
        split_of = subset_splits(images, keys)
        present = set(split_of.values())
        warnings = split_warnings(classes, split_of, float("val" in present), float("test" in present))
        return split_of, warnings, "CVAT subsets (--splits-from-subsets)"
    method = f"seeded random (seed {options.seed})"
    frames = {
        key: (images[key].sequence, images[key].frame_index)
        for key in keys
        if images[key].frame_index is not None
    }
    units = None
    if frames and options.video_split == "ranges":
        units = frame_ranges(frames)  # type: ignore[arg-type]
        method += (
            f"; video frames in contiguous frame ranges ({RANGES_PER_VIDEO} per video) so that "
            "neighbouring frames stay in one split (--video-split ranges)"
        )
    elif frames:
        method += "; video frames one by one: neighbouring near-identical frames leak between splits"
    split_of, warnings = plan_splits(classes, options.val_ratio, options.test_ratio, options.seed, units)
    return split_of, warnings, method


def _build_folder(
    out_dir: Path,
    jobs: list[ImageJob],
    report: ConversionReport,
    options: ConversionOptions,
    stuff_cache: Path | None,
) -> None:
    """Run the jobs into a temporary sibling of ``out_dir`` and move it into place.

    Raises:
        ConversionError: a job failed (the message says where the stuff maps stay, if any), or the
            output cannot be written.
    """
    try:
        with atomic_directory(out_dir, overwrite=options.overwrite) as tmp:
            jobs = [dataclasses.replace(job, out_root=tmp) for job in jobs]
            _write_outputs(tmp, run_jobs(convert_image, jobs, options.num_workers), report, options)
            raise_if_interrupted()  # never commit a run whose Ctrl-C was swallowed on the way
    except FileExistsError:
        raise
    except ConversionError as err:
        if stuff_cache is None:
            raise
        raise ConversionError(f"{err} (the stuff maps stay in {stuff_cache} for the next run)") from err
    except OSError as err:  # the output cannot be written (permissions, full disk, ...)
        where = err.filename or out_dir
        raise ConversionError(f"--output-dir {out_dir}: cannot write {where} ({err.strerror or err})") from err


def convert_exports(exports: list[Path], out_dir: Path, options: ConversionOptions) -> ConversionReport:
    """Convert CVAT exports into a COCO-panoptic folder.

    Args:
        exports: Export folders or annotation files (merged by label name and picture path).
        out_dir: Output folder (interface 1: ``annotations/panoptic_{split}.json``,
            ``annotations/panoptic_{split}/*.png``, ``{split}/*``, ``report.json``).
        options: See `ConversionOptions`.

    Returns:
        The report (also written to ``out_dir/report.json``).

    Raises:
        ConversionError: bad input or options, or an output folder that cannot be written (the
            message names the file and the annotation/image id); nothing is written.
        FileExistsError: ``out_dir`` exists and ``options.overwrite`` is False.
    """
    out_dir = Path(out_dir)
    _check_options(exports, out_dir, options)
    loaded = [export for path in exports for export in read_export(Path(path), options.image_dirs)]
    images = keep_every_nth_frame(merge_images(loaded), options.frame_step)
    warnings = drop_empty_labels(images, options.skip_empty_labels)
    mapping = None
    if options.stuff_from_model:
        from dataset_scripts.stuff_model import StuffMappingError, load_stuff_mapping

        try:
            mapping = load_stuff_mapping(options.stuff_map)
        except (StuffMappingError, OSError) as err:
            raise ConversionError(f"--stuff-map: {err}") from err
    model_stuff = list(mapping.stuff_names) if mapping else []
    categories, category_warnings = build_categories(loaded, images, options.stuff_labels, model_stuff)
    warnings += category_warnings
    _warn_stuff_like_things(categories, options)
    refs = {cat["name"]: CategoryRef(cat["id"], bool(cat["isthing"])) for cat in categories}
    pictures = plan_pictures(images, options.skip_missing_images, need_masks=mapping is None)
    split_of, split_notes, split_method = _split(images, sorted(pictures.paths), refs, options)
    warnings += pictures.warnings + split_notes

    stuff_cache, stuff_map_categories = None, ()
    if mapping is not None:
        stuff_cache = _stuff_cache_dir(out_dir, options)
        items = sorted((pictures.names[key], path) for key, path in pictures.paths.items())
        _run_stuff_model(items, stuff_cache, mapping, options)
        stuff_map_categories = tuple(refs[name].id for name in mapping.stuff_names)

    report = ConversionReport(
        out_dir=str(out_dir),
        exports=[export.source for export in loaded],
        categories=categories,
        warnings=warnings,
        classes={cat["id"]: ClassStats(cat["name"], bool(cat["isthing"])) for cat in categories},
        renamed={key: name for key, name in pictures.names.items() if name != key},
        split_method=split_method,
    )
    jobs = [
        ImageJob(
            image_id=index + 1,
            record=images[key],
            path=pictures.paths[key],
            name=pictures.names[key],
            split=split_of[key],
            out_root=out_dir,  # replaced by the temporary folder in `_build_folder`
            categories=refs,
            overlap=options.overlap,
            keep_crowd=options.keep_crowd,
            stuff_cache=stuff_cache,
            stuff_map_categories=stuff_map_categories,
        )
        for index, key in enumerate(sorted(pictures.paths))
    ]
    _build_folder(out_dir, jobs, report, options, stuff_cache)
    return report
