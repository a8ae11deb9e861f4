"""Command line of `finetune.hub.push`: ``python push_to_hub.py`` / ``detr-panoptic-push``.

    python push_to_hub.py --model outputs/run/final --repo-id USER/NAME [--private] \
        [--revision BRANCH] [--commit-message MSG] [--dry-run DIR] [--onnx EXPORT_DIR]

`--model` is the name every script uses for the checkpoint; `--model-dir` stays as a hidden alias.

Exit status: 0 on success, 1 when the folder is invalid, 2 for a network / authentication failure.
"""

import argparse
import logging
import sys
from collections.abc import Sequence

from finetune.hub.model_card import DEFAULT_LICENSE
from finetune.hub.push import HubUploadError, ModelFolderError, push_model_dir

logger = logging.getLogger("push_to_hub")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Check a trained checkpoint folder, write its model card, upload it to the Hub in one commit.",
        epilog="Exit status: 0 on success, 1 for an invalid folder or repo id, 2 for a network/auth failure.",
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--model", dest="model_dir", metavar="MODEL", help="checkpoint folder written by train.py (output_dir/final)"
    )
    # This script's former name for it, kept working but out of --help (docs/cli.md: one vocabulary).
    model.add_argument("--model-dir", dest="model_dir", help=argparse.SUPPRESS)
    parser.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", default=None, help="branch to push to (created when missing)")
    parser.add_argument("--commit-message", default=None, help="message of the upload commit")
    parser.add_argument(
        "--dry-run", metavar="DIR", default=None, help="write the upload folder to DIR, upload nothing"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --dry-run DIR")
    parser.add_argument(
        "--onnx",
        metavar="EXPORT_DIR",
        default=None,
        help="also upload this ONNX export of the checkpoint (detr-panoptic-export --output-dir) as onnx/",
    )
    parser.add_argument(
        "--license", default=DEFAULT_LICENSE, help=f"model card license (default {DEFAULT_LICENSE})"
    )
    parser.add_argument(
        "--dataset-id", default=None, help="Hub id of the training dataset, for the card metadata"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        push_model_dir(
            args.model_dir,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            dry_run_dir=args.dry_run,
            license=args.license,
            dataset_id=args.dataset_id,
            overwrite_dry_run=args.overwrite,
            onnx_dir=args.onnx,
        )
    except (ModelFolderError, FileExistsError) as err:
        logger.error("%s", err)
        return 1
    except HubUploadError as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
