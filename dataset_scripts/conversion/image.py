"""The per-image step of the converter: load one picture, rasterise its shapes, write both.

`convert_image` is a pure function of its `ImageJob` (it only writes the job's two output files), so
the orchestrator (`converter`) can run it in worker processes in any order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dataset_scripts.atomic_io import atomic_write_bytes
from dataset_scripts.conversion.rasterize import CategoryRef, rasterize_image
from dataset_scripts.conversion.report import ReportWarning
from dataset_scripts.cvat.records import ConversionError, ImageRecord
from dataset_scripts.image_io import load_upright_rgb, write_image
from dataset_scripts.panoptic_format import encode_panoptic_png


@dataclass
class ImageJob:
    """Everything `convert_image` needs for one picture (picklable, for worker processes).

    Attributes:
        image_id: Output image id.
        record: The merged image record.
        path: The picture file.
        name: Unique flat output file name (also the stuff-cache key).
        split: ``train``, ``val`` or ``test``.
        out_root: The (temporary) output folder.
        categories: Output category per label.
        overlap: ``area`` or ``order`` (see `rasterize.rasterize_image`).
        keep_crowd: Keep the export's crowd flag.
        stuff_cache: Folder of the model's stuff maps (None: no model stuff).
        stuff_map_categories: Output category id per stuff-map index.
    """

    image_id: int
    record: ImageRecord
    path: Path
    name: str
    split: str
    out_root: Path
    categories: dict[str, CategoryRef]
    overlap: str
    keep_crowd: bool
    stuff_cache: Path | None = None
    stuff_map_categories: tuple[int, ...] = ()


@dataclass
class ImageResult:
    """What `convert_image` wrote for one picture (``name``: its output file name)."""

    image_id: int
    name: str
    split: str
    width: int
    height: int
    segments_info: list[dict[str, Any]]
    warnings: list[ReportWarning] = field(default_factory=list)


def panoptic_png_name(name: str) -> str:
    """The panoptic PNG of an output picture name (``a.jpg`` -> ``a.png``)."""
    return PurePosixPath(name).stem + ".png"


def _load_stuff_map(job: ImageJob):
    from dataset_scripts.stuff_model import StuffCacheError, load_stuff_map

    record = job.record
    try:
        stuff_map = load_stuff_map(job.stuff_cache, job.name)
    except StuffCacheError as err:
        raise ConversionError(str(err)) from err
    if stuff_map.shape != (record.height, record.width):
        raise ConversionError(
            f"{job.stuff_cache}: stuff map of {job.name} has shape {stuff_map.shape}, image is "
            f"{record.height}x{record.width}; delete the cache folder and run again"
        )
    return stuff_map


def convert_image(job: ImageJob) -> ImageResult:
    """Load, rasterise and write one picture and its panoptic PNG (runs in a worker).

    Raises:
        ConversionError: the picture cannot be decoded or has another size than the export says,
            a shape is malformed, or the stuff map is missing or of the wrong size.
    """
    record = job.record
    image, changed = load_upright_rgb(
        job.path, (record.width, record.height), f"{record.image_id} of {record.source}"
    )
    stuff_map = _load_stuff_map(job) if job.stuff_cache is not None else None
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
    write_image(job.path, job.out_root / job.split / job.name, image, changed)
    png = job.out_root / "annotations" / f"panoptic_{job.split}" / panoptic_png_name(job.name)
    atomic_write_bytes(png, encode_panoptic_png(result.ids))
    return ImageResult(
        image_id=job.image_id,
        name=job.name,
        split=job.split,
        width=record.width,
        height=record.height,
        segments_info=result.segments_info,
        warnings=result.warnings,
    )
