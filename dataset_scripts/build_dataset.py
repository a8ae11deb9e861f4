"""Build a Hugging Face dataset from a COCO-panoptic folder, save it, optionally push it to the Hub.

    python dataset_scripts/build_dataset.py --panoptic outputs/sample_panoptic --out outputs/sample_hf
    python dataset_scripts/build_dataset.py --panoptic DIR --out HF_DIR --push-to-hub user/name [--private]

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

import datasets

from dataset_scripts.atomic_io import atomic_directory
from dataset_scripts.panoptic_builder import build_hf_dataset, load_categories
from dataset_scripts.panoptic_format import PanopticFormatError

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
    lines = []
    for name, split in dataset.items():
        segments = sum(len(s) for s in split["segments_info"])
        lines.append(f"{name:>6}: {split.num_rows} images, {segments} segments")
    for cat in load_categories(dataset):
        kind = "thing" if cat["isthing"] else "stuff"
        lines.append(f"  category {cat['id']:>3} {cat['name']:<16} {kind}  color {tuple(cat['color'])}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--panoptic", required=True, type=Path, help="COCO-panoptic folder (converter output)"
    )
    parser.add_argument("--out", required=True, type=Path, help="where to save_to_disk the DatasetDict")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--cache-dir", type=Path, help="datasets cache for the prepared Arrow files")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also push to this Hub dataset repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.out.exists() and not args.overwrite:
        logger.error("error: %s already exists; pass --overwrite to replace it", args.out)
        return 2
    try:
        dataset = build_hf_dataset(args.panoptic, cache_dir=args.cache_dir)
    except (FileNotFoundError, PanopticFormatError) as err:
        logger.error("error: %s", err)
        return 2
    save_dataset(dataset, args.out, overwrite=args.overwrite)
    for line in summary_lines(dataset):
        logger.info(line)
    logger.info("saved to %s (datasets.load_from_disk)", args.out)
    if args.push_to_hub:
        push_dataset(dataset, args.push_to_hub, private=args.private)
        logger.info("pushed to https://huggingface.co/datasets/%s", args.push_to_hub)
    return 0


if __name__ == "__main__":
    sys.exit(main())
