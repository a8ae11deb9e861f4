"""Convert CVAT exports into a COCO-panoptic folder (train/val/test) with a report.

Usage::

    cvat-to-panoptic --cvat EXPORT [--cvat EXPORT ...] \\
        [--stuff-labels LABEL ...] [--stuff-from-model [MODEL]] --output-dir DIR [options]

An EXPORT is a CVAT "COCO 1.0" export folder (``annotations/instances_<subset>.json`` +
``images/``), a "CVAT for images 1.1" or "CVAT for video 1.1" folder (``annotations.xml`` +
``images/``), of a task or of a whole project, a folder of
per-class COCO exports (``<class>/coco.json`` + ``<class>/images/``), or directly a ``.json`` /
``.xml`` annotation file. Several exports are merged: labels by name, images by their path.

This module is the command line only; the work is done by `converter.convert_exports` (the
orchestrator) and `conversion.convert_image` (one picture). A bad input, an unwritable output,
Ctrl-C or SIGTERM end the run with one ``error:`` line and nothing written (exit 2 for bad input,
130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

try:  # run as a file (`python dataset_scripts/cvat_to_panoptic.py`), this needs the project installed: one line says so
    import dataset_scripts  # noqa: F401
except ModuleNotFoundError as missing:
    print(f"{sys.argv[0]}: {missing}: install detr-panoptic with `pip install -e .` from the repository root", file=sys.stderr)
    raise SystemExit(2) from None

from dataset_scripts.cli_options import add_option, make_parser
from dataset_scripts.conversion.interrupts import Interrupted, handle_signals
from dataset_scripts.conversion.orchestrator import ConversionOptions, convert_exports
from dataset_scripts.cvat.records import ConversionError
from dataset_scripts.panoptic_format import PanopticFormatError
from dataset_scripts.preview import distinct_colors

__all__ = ["ConversionOptions", "build_parser", "convert_exports", "distinct_colors", "main"]

logger = logging.getLogger("cvat_to_panoptic")

DEFAULT_STUFF_MODEL = "facebook/detr-resnet-50-panoptic"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__.split("\n\n")[0])
    _add_io_arguments(parser)
    _add_option_arguments(parser)
    return parser


def _add_io_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--cvat",
        type=Path,
        action="append",
        required=True,
        metavar="EXPORT",
        help="CVAT export folder or annotation file (repeat to merge several)",
    )
    add_option(parser, "output_dir", aliases=("--out",), type=Path, required=True, help="output COCO-panoptic folder")


def _add_option_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--stuff-labels",
        nargs="+",
        default=[],
        metavar="LABEL",
        help="CVAT labels that are stuff (one segment per class per image)",
    )
    add(
        "--stuff-from-model",
        nargs="?",
        const=DEFAULT_STUFF_MODEL,
        default=None,
        metavar="MODEL",
        help=f"fill stuff under the CVAT shapes with a panoptic DETR (default {DEFAULT_STUFF_MODEL})",
    )
    add(
        "--stuff-map",
        type=Path,
        default=None,
        metavar="FILE",
        help="mapping of the model's classes to stuff classes (default: COCO supercategories)",
    )
    add(
        "--stuff-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="where model stuff maps are cached (default DIR.stuff-cache next to --output-dir); kept to resume",
    )
    add(
        "--stuff-batch-size",
        type=int,
        default=None,
        metavar="N",
        help="stuff-model batch size (default: 4 on a GPU, 1 on CPU)",
    )
    add_option(parser, "device", default=None, help="device of the stuff model (default: automatic)")
    add("--keep-crowd", action="store_true", help="keep iscrowd=1 (CVAT sets it on brush masks)")
    add(
        "--overlap",
        choices=("area", "order"),
        default="area",
        help="who wins where z_order is equal or lost: the smaller region (area) or the later one",
    )
    add("--val-ratio", type=float, default=0.2, metavar="F", help="fraction of images in val (default: 0.2)")
    add("--test-ratio", type=float, default=0.0, metavar="F", help="fraction of images in test (default: 0)")
    add_option(parser, "seed", type=int, default=0, help="seed of the train/val/test split (default: 0)")
    add_option(parser, "num_workers", type=int, default=1, help="worker processes (default: 1, this process)")
    add(
        "--preview",
        type=int,
        default=0,
        metavar="N",
        help="write N colour overlays to DIR/preview/<split>_<image>.png, chosen to show every class and split",
    )
    add("--skip-missing-images", action="store_true", help="report missing pictures instead of failing")
    add(
        "--skip-empty-labels",
        action="store_true",
        help="skip annotations whose label is empty (named in report.json) instead of failing",
    )
    add(
        "--splits-from-subsets",
        action="store_true",
        help="use the CVAT subsets of a project export as splits (Train, Validation/Val, Test) "
        "instead of a seeded random split",
    )
    add(
        "--frame-step",
        type=int,
        default=1,
        metavar="N",
        help="keep every N-th frame of a video task (default: 1, every annotated frame)",
    )
    add(
        "--video-split",
        choices=("ranges", "random"),
        default="ranges",
        help="split video frames in contiguous frame ranges (default: neighbouring frames are "
        "near-duplicates) or one by one at random",
    )
    add(
        "--images",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="extra folder to look for pictures in (repeatable); also allows pictures named by a path "
        "that leaves the export, when they lie in DIR",
    )
    add_option(parser, "overwrite", help="replace an existing --output-dir folder")


def _options(args: argparse.Namespace) -> ConversionOptions:
    return ConversionOptions(
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
        subset_splits=args.splits_from_subsets,
        frame_step=args.frame_step,
        video_split=args.video_split,
        skip_empty_labels=args.skip_empty_labels,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The ``cvat-to-panoptic`` command; returns the exit status (0, 2 bad input, 130/143 interrupted)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with handle_signals():
            report = convert_exports(args.cvat, args.output_dir, _options(args))
    except (ConversionError, PanopticFormatError, FileExistsError) as err:
        logger.error("error: %s", str(err).replace("\n", " "))
        return 2
    except OSError as err:  # a file that vanished or could not be read mid-run
        where = f"{err.filename}: " if err.filename else ""
        logger.error("error: %s%s", where, err.strerror or str(err).replace("\n", " "))
        return 2
    except (Interrupted, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        logger.error("error: %s: nothing written to %s", what, args.output_dir)
        return 128 + signum
    logger.info("%s", report.format_table())
    logger.info("wrote %s", args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
