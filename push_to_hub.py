"""Check a trained checkpoint folder, write its model card and upload it to the Hub (`finetune.hub.push`).

    python push_to_hub.py --model outputs/run/final --repo-id USER/NAME [--private] [--dry-run DIR]

The same command is installed as ``detr-panoptic-push``; ``--help`` lists every option.
"""

import sys

try:  # the project and its dependencies must be installed: one line says so, not a traceback
    from finetune.hub.cli import main
except ModuleNotFoundError as missing:
    print(f"{sys.argv[0]}: {missing}: install detr-panoptic with `pip install -e .` from the repository root", file=sys.stderr)
    raise SystemExit(2) from None

if __name__ == "__main__":
    sys.exit(main())
