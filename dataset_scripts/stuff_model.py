"""Stuff pseudo-labels, command line: fill the cache for a folder of pictures and print each class's share.

Things are annotated by hand in CVAT; the background *stuff* (floor, wall, sky, ground...) can
instead be predicted by a pretrained COCO panoptic model (``facebook/detr-resnet-50-panoptic``)
whose COCO classes are mapped to a few broad stuff classes by a user-editable YAML file
(``configs/coco_stuff_map.yaml``: each COCO stuff class to its supercategory, every COCO thing to
``misc``). The converter pastes the CVAT things on top of the resulting stuff map.

The parts live in `dataset_scripts.stuff`: ``mapping`` (the YAML, the per-image mapping step),
``cache`` (one cached map per picture) and ``labeller`` (the model run, sharded over processes).
The converter calls them (``cvat_to_panoptic.py --stuff-from-model``); run as a script it fills a
cache for a folder of pictures and prints the share of each stuff class, to check a mapping or
to precompute the cache on a GPU machine, on one or several processes (GPUs or CPU workers)::

    python dataset_scripts/stuff_model.py IMAGES_DIR --cache-dir CACHE [--model PATH] [--mapping YAML]
    accelerate launch --num_processes 4 dataset_scripts/stuff_model.py IMAGES_DIR --cache-dir CACHE ...
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

try:  # run as a file (`python dataset_scripts/stuff_model.py`), this needs the project installed: one line says so
    import dataset_scripts  # noqa: F401
except ModuleNotFoundError as missing:
    print(f"{sys.argv[0]}: {missing}: install detr-panoptic with `pip install -e .` from the repository root", file=sys.stderr)
    raise SystemExit(2) from None

import numpy as np

from dataset_scripts.cli_options import add_option, make_parser
from dataset_scripts.stuff.cache import (
    CACHE_INFO_NAME,
    StuffCacheError,
    cache_path,
    load_stuff_map,
    model_identity,
)
from dataset_scripts.stuff.labeller import (
    DEFAULT_MODEL,
    StuffModelError,
    default_load_image,
    load_stuff_model,
    pseudo_label_stuff,
)
from dataset_scripts.stuff.mapping import (
    DEFAULT_MAPPING_PATH,
    VOID_INDEX,
    StuffMapping,
    StuffMappingError,
    load_stuff_mapping,
    map_panoptic_prediction,
)

__all__ = [  # what the converter and the tests import from here
    "CACHE_INFO_NAME",
    "DEFAULT_MAPPING_PATH",
    "DEFAULT_MODEL",
    "VOID_INDEX",
    "StuffCacheError",
    "StuffMapping",
    "StuffMappingError",
    "StuffModelError",
    "cache_path",
    "class_shares",
    "collect_images",
    "default_load_image",
    "load_stuff_map",
    "load_stuff_mapping",
    "load_stuff_model",
    "main",
    "map_panoptic_prediction",
    "model_identity",
    "pseudo_label_stuff",
]

logger = logging.getLogger(__name__)

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


def _process_state(device: str | None):
    """Accelerate's view of the processes of ``accelerate launch`` / ``torchrun``; None for a lone process.

    A lone process creates no Accelerate state, so that calling `main` leaves the process as it was.
    Without CUDA (or with ``--device cpu``) the processes are CPU workers (Accelerate's MULTI_CPU, gloo).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``stuff-pseudo-labels``."""
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "images", nargs="+", type=Path, help="picture files or folders (searched recursively)"
    )
    parser.add_argument(
        "--cache-dir", type=Path, required=True, metavar="DIR", help="folder of the cached stuff maps"
    )
    add_option(parser, "model", default=DEFAULT_MODEL, help="Hub id or local folder (default: %(default)s)")
    parser.add_argument(
        "--mapping", type=Path, default=None, metavar="YAML", help=f"mapping YAML (default: {DEFAULT_MAPPING_PATH})"
    )
    add_option(
        parser,
        "batch_size",
        type=int,
        default=None,
        help="pictures per forward pass (default: 4 on a GPU, 1 on CPU)",
    )
    add_option(parser, "device", default=None, help="torch device (default: cuda when available, else cpu)")
    add_option(parser, "threshold", type=float, default=0.85, help="minimum segment score (default: 0.85)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``stuff-pseudo-labels`` command; returns the exit status (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    state = _process_state(args.device)
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
            state=state,
        )
        if state is not None and not state.is_main_process:
            return 0
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
