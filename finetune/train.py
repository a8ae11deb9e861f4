"""Fine-tune DETR panoptic segmentation in two stages (boxes, then masks) with Accelerate.

    accelerate launch finetune/train.py --config finetune/configs/quickstart.yaml
    accelerate launch finetune/train.py --config finetune/configs/default.yaml --dataset my_panoptic
    accelerate launch finetune/train.py --config ... --resume_from_checkpoint latest
    accelerate launch finetune/train.py --config ... --stages masks --model outputs/run/final

Every option has help text (`--help`); `finetune/config.py` defines them. Exit status: 0 done, 1 a run
error (one line: model, dataset, output folder, Hub, checkpoint...), 2 a configuration error.
The run itself (`finetune/training/run.py`) is imported only after the command line is parsed, so that
`--help` and configuration errors answer at once.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

try:  # run as a file (`python finetune/train.py`), this needs the project installed: one line says so
    import finetune  # noqa: F401
except ModuleNotFoundError as missing:
    print(f"{sys.argv[0]}: {missing}: install detr-panoptic with `pip install -e .` from the repository root", file=sys.stderr)
    raise SystemExit(2) from None

from finetune.config import ConfigError, parse_config


def main(argv: Sequence[str] | None = None) -> int:
    """parse the configuration -> run (set-up, checks, build, fit, save, push); returns the exit status."""
    try:
        config = parse_config(None if argv is None else list(argv))
    except ConfigError as err:
        logging.basicConfig(format="%(levelname)s: %(message)s")
        logging.getLogger(__name__).error(f"configuration error: {err}")
        return 2
    from finetune.training.run import run  # torch, transformers, accelerate, datasets: after parsing

    return run(config)


if __name__ == "__main__":
    sys.exit(main())
