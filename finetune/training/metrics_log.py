"""Metrics as JSON lines (`output_dir/metrics.jsonl`) and to the Accelerate trackers.

One line per record, written by the main process only::

    {"type": "train", "stage": "detection", "epoch": 0, "step": 10, "loss": 1.23, "loss_ce": ..., "lr": 1e-4}
    {"type": "eval", "stage": "masks", "epoch": 1, "step": 40, "pq": 0.41, ..., "per_class_pq": {...}}

`step` is the global optimiser step. Numbers only go to the trackers (nested dicts are flattened).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from dataset_scripts.atomic_io import atomic_write_bytes

logger = logging.getLogger(__name__)


class MetricsLogger:
    """Append records to `path` (main process) and forward scalars to `accelerator.log`."""

    def __init__(self, accelerator: Accelerator, path: str | Path) -> None:
        self.accelerator = accelerator
        self.path = Path(path)

    def log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")
        prefix = f"{record.get('type', 'metric')}/{record.get('stage', '')}"
        scalars = {f"{prefix}/{k}": v for k, v in _flatten(record).items() if k not in ("epoch", "step")}
        if scalars and self.accelerator.trackers:
            self.accelerator.log(scalars, step=int(record.get("step", 0)))

    def truncate_after(self, global_step: int) -> None:
        """Drop lines logged after `global_step` (a resumed run redoes them).

        Lines that are not a JSON record (e.g. the last line, cut off by a crash) are dropped with a
        warning. The file is replaced atomically, so a crash here leaves the old file.
        """
        if not self.accelerator.is_main_process or not self.path.is_file():
            return
        kept = []
        text = self.path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                logger.warning("%s:%d: dropping an unreadable metrics line (%s)", self.path, number, error)
                continue
            if not isinstance(record, dict):
                logger.warning("%s:%d: dropping a metrics line that is not a record", self.path, number)
                continue
            if record.get("step", 0) <= global_step:
                kept.append(line)
        atomic_write_bytes(self.path, "".join(line + "\n" for line in kept).encode("utf-8"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the line parseable
    return value


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, prefix=f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out
