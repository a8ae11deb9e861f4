"""`accelerate launch` whose failed runs end on the training script's own one-line error.

    python -m finetune.training.launch [accelerate launch options] finetune/train.py [training options]

`accelerate launch -q` hides the launcher's `CalledProcessError` traceback for single-process launches,
but a multi-process launch goes through `torch.distributed.run`, whose failure `-q` prints as torch's
`ChildFailedError` summary block (accelerate 1.16) or does not catch at all (its traceback, 1.15). This runs
accelerate's own launch command in this process, not quiet, so that both launchers raise their exception
here on every accelerate version, and turns a failed training process into exit status 1 with no
traceback or summary after the training script's own one-line error. The options are accelerate
launch's, unchanged; a successful run is exactly `accelerate launch`'s.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence

from accelerate.commands.launch import launch_command, launch_command_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `accelerate launch` arguments and launch; returns the exit status (1 when training failed)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(None if argv is None else list(argv))
    # Quiet mode would print torch's failure summary itself (accelerate 1.16) and exit: the exceptions below
    # are what every version raises when it is off.
    args.quiet = False
    # torch's elastic agent logs each failed or stopped process after the script's own error.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        launch_command(args)
    except subprocess.CalledProcessError:
        return 1
    except ChildFailedError as err:
        # The training processes have logged their error; the launcher's traceback would only repeat it.
        # A process killed by a signal (out of memory...) logged nothing: say which one.
        failures = err.failures.values()
        if all(failure.exitcode < 0 for failure in failures):
            killed = ", ".join(f"rank {f.local_rank}: {f.signal_name()}" for f in failures)
            logging.basicConfig(format="%(levelname)s: %(message)s")
            logging.getLogger(__name__).error(f"training process(es) killed by a signal ({killed})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
