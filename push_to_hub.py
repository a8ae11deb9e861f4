"""Check a trained checkpoint folder, write its model card and upload it to the Hub (`finetune.hub.push`).

    python push_to_hub.py --model outputs/run/final --repo-id USER/NAME [--private] [--dry-run DIR]

The same command is installed as ``detr-panoptic-push``; ``--help`` lists every option.
"""

import sys

from finetune.hub.cli import main

if __name__ == "__main__":
    sys.exit(main())
