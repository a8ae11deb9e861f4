"""Run `finetune/train.py` under `accelerate launch` from Python and read its final metrics.

The tiny checkpoint's pretraining script and the training benches go through this, so that they
train exactly what users run (`accelerate launch finetune/train.py --config ...`): Accelerate,
the training loop, checkpoints, evaluation and `final/all_results.json`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finetune.training.export import RESULTS_FILE

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO_ROOT / "finetune" / "train.py"


class TrainingRunError(RuntimeError):
    """`finetune/train.py` exited with a non-zero status (its log says why)."""


def train_command(config: str | Path, output_dir: str | Path, *args: str) -> list[str]:
    """`python -m finetune.training.launch` (= `accelerate launch -q`) of one process on `config`."""
    return [
        sys.executable,
        "-m",
        "finetune.training.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(TRAIN_SCRIPT),
        "--config",
        str(config),
        "--output_dir",
        str(output_dir),
        *args,
    ]


def launch_training(
    config: str | Path, output_dir: str | Path, args: Sequence[str] = (), capture: bool = False
) -> dict[str, Any]:
    """Train with `config` (+ CLI `args`) into `output_dir`; returns `final/all_results.json`.

    Runs offline (`HF_HUB_OFFLINE=1`) from the repository root, one OpenMP thread per process.

    Args:
        config: a YAML config (`finetune/configs/...`).
        output_dir: the run's output folder.
        args: more `finetune/train.py` options (`--dataset_dir DIR`, `--detection_epochs N`, ...).
        capture: capture the run's output (tests) instead of letting it through to the console.

    Raises:
        TrainingRunError: the run failed (with the end of its output when captured).
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = train_command(config, output_dir, *args)
    logger.info("running %s", " ".join(cmd))
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=capture, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or "")[-3000:] if capture else "(see the log above)"
        raise TrainingRunError(f"finetune/train.py failed with exit status {result.returncode}: {tail}")
    return json.loads((Path(output_dir) / "final" / RESULTS_FILE).read_text(encoding="utf-8"))


def summarize(results: dict[str, Any]) -> str:
    """Two lines: `PQ 0.642  things 0.375  stuff 0.909  box mAP 0.410 (SQ, RQ)` and the per-class PQ."""
    per_class = ", ".join(f"{k} {v:.2f}" for k, v in results.get("per_class_pq", {}).items())
    return (
        f"PQ {results['pq']:.3f}  things {results['pq_things']:.3f}  stuff {results['pq_stuff']:.3f}  "
        f"box mAP {results['box_map']:.3f}  (SQ {results['sq']:.3f}, RQ {results['rq']:.3f})\n"
        f"    per-class PQ: {per_class}"
    )
