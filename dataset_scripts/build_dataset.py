"""Build a Hugging Face dataset from a COCO-panoptic folder, save it, optionally push it to the Hub.

    python dataset_scripts/build_dataset.py --dataset outputs/sample_panoptic --output-dir outputs/sample_hf
    python dataset_scripts/build_dataset.py --dataset DIR --output-dir HF_DIR --push-to-hub user/name [--private]

The saved folder loads with ``datasets.load_from_disk(HF_DIR)``; the pushed repository (Parquet
shards + a card) with ``datasets.load_dataset("user/name")``. Either way the category table comes
back with ``dataset_scripts.panoptic_builder.load_categories(dataset)``. The Hub token is taken
from the usual places (``HF_TOKEN``, ``hf auth login``) by huggingface_hub and never printed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

try:  # run as a file (`python dataset_scripts/build_dataset.py`), this needs the project installed: one line says so
    import dataset_scripts  # noqa: F401
except ModuleNotFoundError as missing:
    print(f"{sys.argv[0]}: {missing}: install detr-panoptic with `pip install -e .` from the repository root", file=sys.stderr)
    raise SystemExit(2) from None

from dataset_scripts.atomic_io import atomic_directory
from dataset_scripts.cli_options import add_option, make_parser

if TYPE_CHECKING:  # `datasets` is imported where it is used: `--help` stays fast
    import datasets

logger = logging.getLogger(__name__)


def save_dataset(dataset: datasets.DatasetDict, out_dir: str | Path, overwrite: bool = False) -> Path:
    """`save_to_disk` into a temporary sibling, renamed to `out_dir` on success (never half a folder)."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        dataset.save_to_disk(str(tmp))
    return out_dir


def push_dataset(dataset: datasets.DatasetDict, repo_id: str, private: bool = False) -> None:
    """Push as Parquet shards with a dataset card; the category table travels in the features."""
    dataset.push_to_hub(
        repo_id,
        private=private,
        commit_message="Upload COCO-panoptic dataset (dataset_scripts/build_dataset.py)",
    )


def summary_lines(dataset: datasets.DatasetDict) -> list[str]:
    """Human-readable rows/segments per split and the category table."""
    from dataset_scripts.panoptic_builder import load_categories

    lines = []
    for name, split in dataset.items():
        segments = sum(len(s) for s in split["segments_info"])
        lines.append(f"{name:>6}: {split.num_rows} images, {segments} segments")
    for cat in load_categories(dataset):
        kind = "thing" if cat["isthing"] else "stuff"
        lines.append(f"  category {cat['id']:>3} {cat['name']:<16} {kind}  color {tuple(cat['color'])}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``build-panoptic-dataset``."""
    parser = make_parser(__doc__.split("\n\n")[0])
    add_option(
        parser,
        "dataset",
        aliases=("--panoptic",),
        type=Path,
        required=True,
        help="COCO-panoptic folder (the converter's --output-dir)",
    )
    add_option(
        parser,
        "output_dir",
        aliases=("--out",),
        type=Path,
        required=True,
        help="where to save_to_disk the DatasetDict",
    )
    add_option(parser, "overwrite", help="replace an existing --output-dir folder")
    parser.add_argument(
        "--cache-dir", type=Path, metavar="DIR", help="datasets cache for the prepared Arrow files"
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also push to this Hub dataset repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``build-panoptic-dataset`` command; returns the exit status (2 for bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from dataset_scripts.panoptic_builder import build_hf_dataset
    from dataset_scripts.panoptic_format import PanopticFormatError

    if args.output_dir.exists() and not args.overwrite:
        logger.error("error: %s already exists; pass --overwrite to replace it", args.output_dir)
        return 2
    try:
        dataset = build_hf_dataset(args.dataset, cache_dir=args.cache_dir)
    except (FileNotFoundError, PanopticFormatError) as err:
        logger.error("error: %s", err)
        return 2
    save_dataset(dataset, args.output_dir, overwrite=args.overwrite)
    for line in summary_lines(dataset):
        logger.info(line)
    logger.info("saved to %s (datasets.load_from_disk)", args.output_dir)
    if args.push_to_hub:
        push_dataset(dataset, args.push_to_hub, private=args.private)
        logger.info("pushed to https://huggingface.co/datasets/%s", args.push_to_hub)
    return 0


if __name__ == "__main__":
    sys.exit(main())
