"""Helpers of the training tests: run `finetune/train.py` as a subprocess on the CI config.

The CVAT sample is `sample_data/` when bundled; otherwise it is generated once per session with
`dataset_scripts/make_sample.py` (the same generator) and passed with `--sample_exports`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CI_CONFIG = REPO_ROOT / "finetune" / "configs" / "ci.yaml"
TRAIN = REPO_ROOT / "finetune" / "train.py"
FAULTY_TRAIN = REPO_ROOT / "tests" / "faulty_train.py"
BIN = Path(sys.executable).parent
SAMPLE_EXPORTS = ("cvat_task_materials", "cvat_task_machines")


def sample_export_args(tmp_root: Path) -> list[str]:
    """`--sample_exports ...` for a generated sample when the bundled one is absent, else []."""
    bundled = REPO_ROOT / "sample_data"
    if all((bundled / name).is_dir() for name in SAMPLE_EXPORTS):
        return []
    out = tmp_root / "sample_data"
    if not out.is_dir():
        subprocess.run(
            [sys.executable, str(REPO_ROOT / "dataset_scripts" / "make_sample.py"), "--out", str(out)],
            check=True,
            capture_output=True,
        )
    return ["--sample_exports", ",".join(str(out / name) for name in SAMPLE_EXPORTS)]


def train_env(**extra: str) -> dict[str, str]:
    """The environment of a training subprocess: offline, one thread per process, plus `extra`."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",  # 2 cores: keep two-process runs from oversubscribing
        PYTHONUNBUFFERED="1",
        TQDM_DISABLE="1",
        **extra,
    )
    return env


def free_port() -> int:
    """A TCP port the OS reports free (bind to port 0), for a distributed rendezvous under pytest-xdist."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_cmd(output_dir: Path, *args: str, num_processes: int = 1, script: Path = TRAIN) -> list[str]:
    """`accelerate launch -q ... finetune/train.py --config ci.yaml --output_dir OUT ARGS`.

    `-q` (`--quiet`): a failing run ends on the script's one-line error, without accelerate's
    `CalledProcessError` traceback (single-process launches; the exit status becomes 1). `script`:
    `tests/faulty_train.py` (`FAULTY_TRAIN`) injects the fault its environment variables name.
    """
    return [
        str(BIN / "accelerate"),
        "launch",
        "-q",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(script),
        "--config",
        str(CI_CONFIG),
        "--output_dir",
        str(output_dir),
        *args,
    ]


def run_training(
    cmd: list[str], timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `cmd` from the repository root (timeout: a hang guard, not a speed goal)."""
    return subprocess.run(
        cmd, cwd=REPO_ROOT, env=env or train_env(), capture_output=True, text=True, timeout=timeout
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
