"""``python -m finetune.export``: the same command as ``detr-panoptic-export``."""

import sys

from finetune.export.cli import main

sys.exit(main())
