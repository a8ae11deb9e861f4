"""Convert CVAT exports into a COCO-panoptic folder (train/val/test) with a report.

Usage::

    python dataset_scripts/cvat_to_panoptic.py --cvat EXPORT [--cvat EXPORT ...] \\
        [--stuff-labels LABEL ...] [--stuff-from-model [MODEL]] --out DIR [options]

An EXPORT is a CVAT "COCO 1.0" export folder (``annotations/instances_default.json`` +
``images/``), a "CVAT for images 1.1" folder (``annotations.xml`` + ``images/``), a folder of
per-class COCO exports (``<class>/coco.json`` + ``<class>/images/``), or directly a ``.json`` /
``.xml`` annotation file. Several exports are merged: labels by name, images by file name.

Pipeline: read exports (`cvat_coco`, `cvat_xml`) -> merge + categories + splits (here) ->
optional model stuff maps (`stuff_model`) -> per image, in parallel: load upright RGB
(`image_io`), rasterise (`rasterize`), write picture + PNG -> JSONs, previews, ``report.json``.
Everything is built in a temporary sibling folder and renamed at the end (`atomic_directory`):
on a user error nothing is written and the exit status is non-zero.
"""

import argparse
import dataclasses
import logging
import re
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from dataset_scripts.atomic_io import atomic_directory, atomic_write_bytes, atomic_write_json
from dataset_scripts.conversion_report import (
    MISSING_IMAGE,
    NOT_IN_VAL,
    UNANNOTATED,
    UNUSED_LABEL,
    ClassStats,
    ConversionReport,
    ReportWarning,
)
from dataset_scripts.cvat.coco import read_coco_export, read_coco_file, read_per_class_export
from dataset_scripts.cvat.records import MASK_KINDS, ConversionError, Export, ImageRecord
from dataset_scripts.cvat.xml import read_cvat_xml
from dataset_scripts.image_io import UprightImageLoader, load_upright_rgb, write_image
from dataset_scripts.panoptic_format import PanopticFormatError, encode_panoptic_png, read_panoptic_png
from dataset_scripts.preview import distinct_colors
from dataset_scripts.rasterize import CategoryRef, rasterize_image
from dataset_scripts.splits import assign_splits

logger = logging.getLogger("cvat_to_panoptic")

DEFAULT_STUFF_MODEL = "facebook/detr-resnet-50-panoptic"
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
        preview: Number of colour overlays written to ``OUT/preview/``.
        skip_missing_images: Report missing picture files instead of failing.
        overwrite: Replace an existing output folder.
        image_dirs: Extra folders searched for pictures (after the export's own).
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


# --------------------------------------------------------------------------- reading + merging


def read_export(path: Path, extra_image_dirs: Sequence[Path] = ()) -> list[Export]:
    """Read one export, recognising its layout (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: export not found")
    if path.is_file():
        if path.suffix.lower() == ".xml":
            return [read_cvat_xml(path, extra_image_dirs)]
        if path.suffix.lower() == ".json":
            dirs = [path.parent / "images", path.parent.parent / "images", *extra_image_dirs]
            return [read_coco_file(path, dirs)]
        raise ConversionError(f"{path}: expected an .xml or .json annotation file")
    if (path / "annotations.xml").is_file():
        return [read_cvat_xml(path / "annotations.xml", extra_image_dirs)]
    if (path / "annotations").is_dir() and any((path / "annotations").glob("instances_*.json")):
        return read_coco_export(path, extra_image_dirs)
    if any(path.glob("*/coco.json")):
        return read_per_class_export(path, extra_image_dirs)
    raise ConversionError(
        f"{path}: not a CVAT export (expected annotations.xml, annotations/instances_*.json or <class>/coco.json)"
    )


def merge_images(exports: Sequence[Export]) -> dict[str, ImageRecord]:
    """Merge the images of several exports by file name (annotations of both are kept).

    Shapes get a global ``order`` (export order, then file order) for ``--overlap order``.

    Raises:
        ConversionError: the same file name with two different sizes.
    """
    merged: dict[str, ImageRecord] = {}
    order = 0
    for export in exports:
        for image in export.images:
            shapes = []
            for shape in image.shapes:
                shapes.append(dataclasses.replace(shape, order=order))
                order += 1
            seen = merged.get(image.key)
            if seen is None:
                merged[image.key] = dataclasses.replace(image, shapes=shapes)
                continue
            if (seen.width, seen.height) != (image.width, image.height):
                raise ConversionError(
                    f"{image.source}: image {image.image_id} ({image.file_name}) is {image.width}x{image.height} "
                    f"but {seen.source} lists the same file name as {seen.width}x{seen.height}"
                )
            seen.shapes.extend(shapes)
            seen.search_dirs = tuple(dict.fromkeys((*seen.search_dirs, *image.search_dirs)))
    return merged


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
            if label not in declared_in:
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


# --------------------------------------------------------------------------- per image


@dataclass
class ImageJob:
    """Everything `convert_image` needs for one picture (picklable, for worker processes)."""

    image_id: int
    record: ImageRecord
    path: Path
    split: str
    out_root: Path
    categories: dict[str, CategoryRef]
    overlap: str
    keep_crowd: bool
    stuff_cache: Path | None = None
    stuff_map_categories: tuple[int, ...] = ()


@dataclass
class ImageResult:
    """What `convert_image` wrote for one picture."""

    image_id: int
    key: str
    split: str
    width: int
    height: int
    segments_info: list[dict[str, Any]]
    warnings: list[ReportWarning] = field(default_factory=list)


def panoptic_png_name(key: str) -> str:
    return Path(key).stem + ".png"


def convert_image(job: ImageJob) -> ImageResult:
    """Load, rasterise and write one picture and its panoptic PNG (runs in a worker)."""
    record = job.record
    image, changed = load_upright_rgb(
        job.path, (record.width, record.height), f"{record.image_id} of {record.source}"
    )
    stuff_map = None
    if job.stuff_cache is not None:
        from dataset_scripts.stuff_model import StuffCacheError, load_stuff_map

        try:
            stuff_map = load_stuff_map(job.stuff_cache, record.key)
        except StuffCacheError as err:
            raise ConversionError(str(err)) from err
        if stuff_map.shape != (record.height, record.width):
            raise ConversionError(
                f"{job.stuff_cache}: stuff map of {record.key} has shape {stuff_map.shape}, image is "
                f"{record.height}x{record.width}; delete the cache folder and run again"
            )
    result = rasterize_image(
        record.height,
        record.width,
        record.shapes,
        job.categories,
        overlap=job.overlap,
        keep_crowd=job.keep_crowd,
        stuff_map=stuff_map,
        stuff_map_categories=job.stuff_map_categories,
        image=record.key,
    )
    write_image(job.path, job.out_root / job.split / record.key, image, changed)
    png = job.out_root / "annotations" / f"panoptic_{job.split}" / panoptic_png_name(record.key)
    atomic_write_bytes(png, encode_panoptic_png(result.ids))
    return ImageResult(
        image_id=job.image_id,
        key=record.key,
        split=job.split,
        width=record.width,
        height=record.height,
        segments_info=result.segments_info,
        warnings=result.warnings,
    )


def _run_jobs(jobs: list[ImageJob], num_workers: int) -> list[ImageResult]:
    progress = dict(total=len(jobs), desc="images", unit="img", disable=None)
    if num_workers <= 1 or len(jobs) <= 1:
        return [convert_image(job) for job in tqdm(jobs, **progress)]
    with ProcessPoolExecutor(max_workers=num_workers) as pool:
        try:
            return list(tqdm(pool.map(convert_image, jobs, chunksize=1), **progress))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# --------------------------------------------------------------------------- orchestration


def _stuff_cache_dir(out_dir: Path, options: ConversionOptions) -> Path:
    base = options.stuff_cache or out_dir.parent / f"{out_dir.name}.stuff-cache"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(options.stuff_from_model)).strip("_")
    return Path(base) / slug


def _write_previews(
    out_root: Path, results: list[ImageResult], categories: list[dict[str, Any]], count: int
) -> None:
    from dataset_scripts.preview import draw_panoptic_overlay  # written by another task; optional

    by_id = {cat["id"]: cat for cat in categories}
    chosen = sorted(results, key=lambda r: r.key)[:count]
    for result in chosen:
        with Image.open(out_root / result.split / result.key) as img:
            image = img.convert("RGB")
        ids = read_panoptic_png(
            out_root / "annotations" / f"panoptic_{result.split}" / panoptic_png_name(result.key)
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
        overlay.convert("RGB").save(out_root / "preview" / panoptic_png_name(result.key))


def convert_exports(exports: list[Path], out_dir: Path, options: ConversionOptions) -> ConversionReport:
    """Convert CVAT exports into a COCO-panoptic folder.

    Args:
        exports: Export folders or annotation files (merged by label name and image file name).
        out_dir: Output folder (interface 1: ``annotations/panoptic_{split}.json``,
            ``annotations/panoptic_{split}/*.png``, ``{split}/*``, ``report.json``).
        options: See `ConversionOptions`.

    Returns:
        The report (also written to ``out_dir/report.json``).

    Raises:
        ConversionError: bad input (the message names the file and the annotation/image id);
            nothing is written.
        FileExistsError: ``out_dir`` exists and ``options.overwrite`` is False.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not options.overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass --overwrite to replace it")
    if options.overlap not in ("area", "order"):
        raise ConversionError(f"--overlap must be 'area' or 'order', got {options.overlap!r}")
    if not exports:
        raise ConversionError("no export given (--cvat)")
    loaded = [export for path in exports for export in read_export(Path(path), options.image_dirs)]
    images = merge_images(loaded)

    mapping = None
    model_stuff: list[str] = []
    if options.stuff_from_model:
        from dataset_scripts.stuff_model import StuffMappingError, load_stuff_mapping

        try:
            mapping = load_stuff_mapping(options.stuff_map)
        except (StuffMappingError, OSError) as err:
            raise ConversionError(f"--stuff-map: {err}") from err
        model_stuff = list(mapping.stuff_names)
    categories, warnings = build_categories(loaded, images, options.stuff_labels, model_stuff)
    refs = {cat["name"]: CategoryRef(cat["id"], bool(cat["isthing"])) for cat in categories}

    # Resolve picture files; keep images that have something to paint.
    paths: dict[str, Path] = {}
    for key, record in sorted(images.items()):
        path = record.resolve()
        if path is None:
            message = f"image file not found (looked in {', '.join(map(str, record.search_dirs))})"
            if not options.skip_missing_images:
                raise ConversionError(
                    f"{record.source}: image {record.image_id} ({record.file_name}): {message}"
                )
            warnings.append(ReportWarning(MISSING_IMAGE, record.source, key, "", message + ": skipped"))
            continue
        if not mapping and not any(s.kind in MASK_KINDS for s in record.shapes):
            warnings.append(ReportWarning(UNANNOTATED, record.source, key, "", "no mask annotation: skipped"))
            continue
        paths[key] = path
    if not paths:
        raise ConversionError("no image left to convert (all missing or without mask annotations)")
    stems: dict[str, str] = {}
    for key in paths:
        other = stems.setdefault(Path(key).stem, key)
        if other != key:
            raise ConversionError(
                f"images {other} and {key} would share the panoptic PNG {Path(key).stem}.png"
            )

    image_classes = {
        key: {s.label for s in images[key].shapes if s.kind in MASK_KINDS and s.label in refs}
        for key in paths
    }
    split_of = assign_splits(image_classes, options.val_ratio, options.test_ratio, options.seed)
    for split in ("val", "test"):
        ratio = options.val_ratio if split == "val" else options.test_ratio
        present = {c for key, classes in image_classes.items() if split_of[key] == split for c in classes}
        counts: dict[str, int] = {}
        for classes in image_classes.values():
            for c in classes:
                counts[c] = counts.get(c, 0) + 1
        for label in sorted(c for c, n in counts.items() if ratio > 0 and n >= 2 and c not in present):
            warnings.append(
                ReportWarning(
                    NOT_IN_VAL,
                    "",
                    "",
                    "",
                    f"class '{label}' ({counts[label]} images) has no image in {split}",
                )
            )

    stuff_cache = None
    stuff_map_categories: tuple[int, ...] = ()
    if mapping is not None:
        from dataset_scripts.stuff_model import StuffModelError, pseudo_label_stuff

        stuff_cache = _stuff_cache_dir(out_dir, options)
        stuff_cache.mkdir(parents=True, exist_ok=True)
        logger.info("stuff maps from %s (cache %s)", options.stuff_from_model, stuff_cache)
        try:
            pseudo_label_stuff(
                sorted(paths.items()),
                options.stuff_from_model,
                mapping,
                stuff_cache,
                batch_size=options.stuff_batch_size,
                device=options.stuff_device,
                load_image=UprightImageLoader(),
            )
        except StuffModelError as err:
            raise ConversionError(f"--stuff-from-model {options.stuff_from_model}: {err}") from err
        stuff_map_categories = tuple(refs[name].id for name in mapping.stuff_names)

    report = ConversionReport(
        out_dir=str(out_dir),
        exports=[export.source for export in loaded],
        categories=categories,
        warnings=warnings,
        classes={cat["id"]: ClassStats(cat["name"], bool(cat["isthing"])) for cat in categories},
    )
    with atomic_directory(out_dir, overwrite=options.overwrite) as tmp:
        jobs = [
            ImageJob(
                image_id=index + 1,
                record=images[key],
                path=paths[key],
                split=split_of[key],
                out_root=tmp,
                categories=refs,
                overlap=options.overlap,
                keep_crowd=options.keep_crowd,
                stuff_cache=stuff_cache,
                stuff_map_categories=stuff_map_categories,
            )
            for index, key in enumerate(sorted(paths))
        ]
        results = _run_jobs(jobs, options.num_workers)
        for split in ("train", "val", "test"):
            chosen = [r for r in results if r.split == split]
            if not chosen:
                continue
            report.splits[split] = len(chosen)
            panoptic = {
                "info": {"description": "converted from CVAT by dataset_scripts/cvat_to_panoptic.py"},
                "licenses": [],
                "images": [
                    {"id": r.image_id, "file_name": r.key, "width": r.width, "height": r.height}
                    for r in chosen
                ],
                "annotations": [
                    {
                        "image_id": r.image_id,
                        "file_name": panoptic_png_name(r.key),
                        "segments_info": r.segments_info,
                    }
                    for r in chosen
                ],
                "categories": categories,
            }
            atomic_write_json(tmp / "annotations" / f"panoptic_{split}.json", panoptic)
        for result in results:
            report.warnings.extend(result.warnings)
            report.add_segments(result.key, result.segments_info)
        if options.preview > 0:
            _write_previews(tmp, results, categories, options.preview)
        atomic_write_json(tmp / "report.json", report.to_json(), indent=2)
    return report


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cvat",
        type=Path,
        action="append",
        required=True,
        metavar="EXPORT",
        help="CVAT export folder or annotation file (repeat to merge several)",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output COCO-panoptic folder")
    parser.add_argument(
        "--stuff-labels",
        nargs="+",
        default=[],
        metavar="LABEL",
        help="CVAT labels that are stuff (one segment per class per image)",
    )
    parser.add_argument(
        "--stuff-from-model",
        nargs="?",
        const=DEFAULT_STUFF_MODEL,
        default=None,
        metavar="MODEL",
        help=f"fill stuff under the CVAT shapes with a panoptic DETR (default {DEFAULT_STUFF_MODEL})",
    )
    parser.add_argument(
        "--stuff-map",
        type=Path,
        default=None,
        metavar="FILE",
        help="mapping of the model's classes to stuff classes (default: COCO supercategories)",
    )
    parser.add_argument(
        "--stuff-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="where model stuff maps are cached (default DIR.stuff-cache next to --out)",
    )
    parser.add_argument(
        "--stuff-batch-size",
        type=int,
        default=None,
        help="stuff-model batch size (default: 4 on a GPU, 1 on CPU)",
    )
    parser.add_argument("--device", default=None, help="device of the stuff model (default: automatic)")
    parser.add_argument(
        "--keep-crowd", action="store_true", help="keep iscrowd=1 (CVAT sets it on brush masks)"
    )
    parser.add_argument(
        "--overlap",
        choices=("area", "order"),
        default="area",
        help="who wins where z_order is equal or lost: the smaller region (area) or the later one",
    )
    parser.add_argument("--val-ratio", type=float, default=0.2)
    parser.add_argument("--test-ratio", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument(
        "--preview", type=int, default=0, metavar="N", help="write N colour overlays to DIR/preview/"
    )
    parser.add_argument(
        "--skip-missing-images", action="store_true", help="report missing pictures instead of failing"
    )
    parser.add_argument(
        "--images",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="extra folder to look for pictures in (repeatable)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = ConversionOptions(
        stuff_labels=args.stuff_labels,
        stuff_from_model=args.stuff_from_model,
        stuff_map=args.stuff_map,
        stuff_cache=args.stuff_cache,
        stuff_batch_size=args.stuff_batch_size,
        stuff_device=args.device,
        keep_crowd=args.keep_crowd,
        overlap=args.overlap,
        val_ratio=args.val_ratio,
        test_ratio=args.test_ratio,
        seed=args.seed,
        num_workers=args.num_workers,
        preview=args.preview,
        skip_missing_images=args.skip_missing_images,
        overwrite=args.overwrite,
        image_dirs=args.images,
    )
    try:
        report = convert_exports(args.cvat, args.out, options)
    except (ConversionError, PanopticFormatError, FileExistsError, FileNotFoundError) as err:
        logger.error("error: %s", err)
        return 2
    logger.info("%s", report.format_table())
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
