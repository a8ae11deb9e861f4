"""Generate procedural "construction scene" photos with CVAT COCO 1.0 annotations.

Two uses:

* ``python dataset_scripts/make_sample.py --output-dir sample_data`` writes the small bundled sample: two
  CVAT COCO 1.0 exports (``cvat_task_materials/`` and ``cvat_task_machines/``) holding every quirk
  real CVAT exports have (see `SAMPLE_QUIRKS`), plus a ``README.md`` listing them.
* ``python dataset_scripts/make_sample.py --output-dir DIR --num-images N [--seed S] [--size WxH]
  [--exports K] [--min-things A --max-things B] [--things L ...] [--format coco|xml]`` writes
  larger, clean sets (K exports with different category ids, no other quirk) for training
  benchmarks, as CVAT COCO 1.0 or "CVAT for images 1.1" XML exports.

The generator itself is the `dataset_scripts.sample` package (scenes, textures, writers, plans);
this module is its command line (also the ``make-cvat-sample`` console script).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

try:  # run as a file (`python dataset_scripts/make_sample.py`), this needs the project installed: one line says so
    import dataset_scripts  # noqa: F401
except ModuleNotFoundError as missing:
    print(f"{sys.argv[0]}: {missing}: install detr-panoptic with `pip install -e .` from the repository root", file=sys.stderr)
    raise SystemExit(2) from None

from dataset_scripts.cli_options import add_option, make_parser
from dataset_scripts.sample.export import FORMATS, write_dataset
from dataset_scripts.sample.plans import SAMPLE_QUIRKS, bundled_sample_plans, synthetic_plans
from dataset_scripts.sample.scene import STUFF_LABELS, THING_LABELS

# Re-exported for the callers of the former single-module generator (bench/learning.py).
__all__ = ["SAMPLE_QUIRKS", "STUFF_LABELS", "main", "synthetic_plans", "write_dataset"]

logger = logging.getLogger(__name__)

# Written into sample_data/README.md. Still the old spelling `--out` (an alias of --output-dir), because
# the committed sample_data/ must stay byte-identical to the generator's output: switch both together.
BUNDLED_COMMAND = "python dataset_scripts/make_sample.py --out sample_data --overwrite"


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--size must look like 320x240, got {text!r}") from err
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError(f"--size must be at least 32x32, got {text!r}")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``make-cvat-sample``."""
    parser = make_parser(__doc__.split("\n\n")[0])
    add_option(
        parser,
        "output_dir",
        aliases=("--out",),
        required=True,
        type=Path,
        help="output folder (one sub-folder per export)",
    )
    parser.add_argument(
        "--num-images",
        type=int,
        metavar="N",
        help="write N clean synthetic images (default: the bundled quirky sample)",
    )
    add_option(parser, "seed", type=int, default=0, help="seed of the generated scenes (default: 0)")
    parser.add_argument(
        "--size", type=_parse_size, default=(320, 240), metavar="WxH", help="WxH of synthetic images"
    )
    parser.add_argument(
        "--exports", type=int, default=2, metavar="K", help="number of synthetic exports (default: 2)"
    )
    parser.add_argument(
        "--min-things", type=int, default=1, metavar="A", help="fewest things per synthetic scene (default: 1)"
    )
    parser.add_argument(
        "--max-things", type=int, default=3, metavar="B", help="most things per synthetic scene (default: 3)"
    )
    parser.add_argument(
        "--things",
        nargs="+",
        default=list(THING_LABELS),
        metavar="LABEL",
        help="thing labels of synthetic scenes (and tasks)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="coco",
        help="annotation format of synthetic exports: CVAT COCO 1.0 or CVAT for images 1.1 XML",
    )
    add_option(parser, "overwrite", help="replace an existing --output-dir folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status (2 on a user error, nothing written)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.num_images is None:
            if args.format != "coco":
                raise ValueError("the bundled sample is COCO 1.0 only; --format xml needs --num-images")
            command = BUNDLED_COMMAND + (f" --seed {args.seed}" if args.seed else "")
            docs = write_dataset(
                args.output_dir, bundled_sample_plans(args.seed), args.overwrite, readme_command=command
            )
        else:
            plans = synthetic_plans(
                args.num_images,
                args.seed,
                args.size,
                args.exports,
                args.min_things,
                args.max_things,
                args.things,
            )
            docs = write_dataset(args.output_dir, plans, args.overwrite, annotation_format=args.format)
    except (ValueError, FileExistsError) as err:
        logger.error("error: %s", err)
        return 2
    logger.info("wrote %d exports to %s", len(docs), args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
