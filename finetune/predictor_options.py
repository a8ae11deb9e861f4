"""The command-line options that load a `PanopticPredictor`, shared by evaluate, predict and the demo.

Kept apart from `finetune.inference` (which imports torch) so that a command's ``--help`` answers
at once: the predictor is imported only when `predictor_from_args` loads a checkpoint.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from dataset_scripts.cli_options import add_option

if TYPE_CHECKING:
    from finetune.inference.predictor import PanopticPredictor


def add_predictor_arguments(parser: argparse.ArgumentParser, batch_size: int | None = 4) -> None:
    """The command-line options that choose and configure a `PanopticPredictor` (see `predictor_from_args`).

    Args:
        parser: The command's parser (from `dataset_scripts.cli_options.make_parser`).
        batch_size: Default of ``--batch-size``; None = no such option (one image at a time).
    """
    add_option(
        parser, "model", required=True, help="checkpoint folder (train.py's --output-dir/final) or Hub model id"
    )
    add_option(
        parser, "threshold", type=float, default=None, help="minimum segment score (default: the checkpoint's)"
    )
    if batch_size is not None:
        add_option(
            parser, "batch_size", type=int, default=batch_size, help=f"images per forward pass (default: {batch_size})"
        )
    add_option(parser, "device", default=None, help="cuda, cpu... (default: cuda when available)")
    parser.add_argument(
        "--full-forward",
        action="store_true",
        help="run the mask head on every query, as transformers does (same result, slower; for comparison)",
    )


def predictor_from_args(args: argparse.Namespace) -> PanopticPredictor:
    """The `PanopticPredictor` that `add_predictor_arguments`' options describe.

    Raises:
        ModelLoadError: the checkpoint cannot be loaded.
        ValueError: a bad threshold or batch size.
    """
    from finetune.inference.predictor import PanopticPredictor

    return PanopticPredictor.from_pretrained(
        args.model,
        threshold=args.threshold,
        device=args.device,
        batch_size=getattr(args, "batch_size", 1),
        full_forward=args.full_forward,
    )
