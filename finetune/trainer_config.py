"""The `trainer` section of the configuration: weight EMA, early stopping, optimiser and CPU speed settings.

Kept apart from `finetune/config.py` (which includes it in `TrainingConfig` as `trainer:`) so that each
module stays short; like the rest of the configuration it imports neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainerConfig:
    """Weight averaging, early stopping and CPU/optimiser speed settings of the training loop."""

    ema: bool = False
    """Keep an exponential moving average of the trainable weights; evaluate, save and finish each stage with it."""
    ema_decay: float = 0.99
    """Asymptotic EMA decay per optimiser step (0.99 ~ an average over the last ~100 steps)."""
    ema_tau: float = 100.0
    """EMA warm-up in optimiser steps: the decay is ema_decay * (1 - exp(-step / ema_tau)) (0 = no warm-up)."""
    early_stopping_patience: int = 0
    """Stop a stage after this many evaluations without improving its metric (box mAP, PQ); 0 = never."""
    early_stopping_min_delta: float = 0.0
    """An evaluation must beat the best metric by more than this to count as an improvement."""
    fused_optimizer: bool = True
    """Use torch's fused AdamW when it supports the device (one kernel for all tensors; ~3x on CPU)."""
    check_finite_gradients: bool = True
    """Stop with an error when the gradient norm is NaN/inf (a finite loss can still give them)."""
    flush_denormal: bool = True
    """torch.set_flush_denormal(True): denormal floats are ~10x slower on x86 CPUs (tiny random-init models)."""
    num_threads: int | None = None
    """torch intra-op threads per process (null = torch's default; 1 is fastest on a small shared CPU)."""

    def problems(self) -> list[str]:
        """Out-of-range values, as `ConfigError` messages naming the key (empty when valid)."""
        found = []
        if not 0.0 < self.ema_decay < 1.0:
            found.append(f"trainer.ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.ema_tau < 0:
            found.append(f"trainer.ema_tau must be >= 0, got {self.ema_tau}")
        if self.early_stopping_patience < 0:
            found.append("trainer.early_stopping_patience must be >= 0 (0 = off)")
        if self.early_stopping_min_delta < 0:
            found.append("trainer.early_stopping_min_delta must be >= 0")
        if self.num_threads is not None and self.num_threads < 1:
            found.append("trainer.num_threads must be >= 1 or null")
        return found
