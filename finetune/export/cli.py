"""``detr-panoptic-export`` (also ``python -m finetune.export``): ONNX export of a panoptic checkpoint.

    detr-panoptic-export --model outputs/quickstart/final --output-dir outputs/quickstart/onnx \
        [--opset 17] [--quantize {none,int8} [--calibration-images DIR]] [--image PHOTO ...] [--overwrite]

Writes the export folder (`finetune.export.exporter`), validated against PyTorch before it appears.
Exit status: 0 on success; 2 for a usage error (missing model, output folder that exists or cannot be
written, unsupported opset, onnx/onnxruntime missing, int8 without calibration photos, failed validation), with a one-line message and
nothing written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from dataset_scripts.cli_options import add_option, make_parser

logger = logging.getLogger("export")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``detr-panoptic-export``."""
    from finetune.export.layout import DEFAULT_OPSET, SUPPORTED_OPSETS

    parser = make_parser(
        "ONNX export of a panoptic DETR checkpoint (body + mask head on selected queries), validated "
        "against PyTorch; runs with PanopticPredictor, detr-panoptic-predict and the demo.",
        epilog="Exit status: 0 on success, 2 on a usage error or a failed validation (nothing written).",
    )
    add_option(parser, "model", required=True, help="checkpoint folder (train.py's --output-dir/final) or Hub model id")
    add_option(parser, "output_dir", required=True, help="export folder to create")
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        metavar="N",
        help=f"ONNX opset, {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1} (default: {DEFAULT_OPSET})",
    )
    parser.add_argument(
        "--quantize",
        choices=["none", "int8"],
        default="none",
        help="int8: static quantization of Conv and MatMul, calibrated on photos (4x smaller, faster on CPU, "
        "approximate; default: none)",
    )
    parser.add_argument(
        "--calibration-images",
        default=None,
        metavar="DIR",
        help="--quantize int8: folder of photos of the model's domain to calibrate on (the first 32, sorted; "
        "e.g. the training images; default: the repository's sample photos)",
    )
    parser.add_argument(
        "--image",
        action="append",
        default=None,
        metavar="PHOTO",
        help="photo to validate the export on (repeatable; default: the repository's sample photo)",
    )
    add_option(parser, "overwrite", help="replace an existing --output-dir")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.calibration_images is not None and args.quantize != "int8":
        parser.error("--calibration-images only applies to --quantize int8")  # one line, exit 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from finetune.export.exporter import ExportError, check_opset, export_model

    try:
        check_opset(args.opset)  # before anything slow is imported or loaded
        manifest = export_model(
            args.model,
            args.output_dir,
            opset=args.opset,
            quantize=args.quantize,
            images=args.image,
            overwrite=args.overwrite,
            calibration_dir=args.calibration_images,
        )
    except (ExportError, ImportError) as err:
        logger.error("%s", err)
        return 2
    sizes = manifest["size_bytes"]
    logger.info(
        "wrote %s: %s (%.1f MB), %s (%.1f MB), %s weights, validated against PyTorch",
        args.output_dir,
        *[part for name, size in sizes.items() for part in (name, size / 1e6)],
        "int8" if manifest["quantize"] == "int8" else "fp32",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
