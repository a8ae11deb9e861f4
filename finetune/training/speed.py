"""Process-wide speed settings and the optimiser constructor, chosen by measurement on CPU.

Measured in `bench/learning.py`'s former private loop on the shared 2-core machine (tiny DETR,
batch 4-8 at 48-96 px) and kept here so that `finetune/train.py` gets them too:

* threads: a step took 1.6-2.8 s with `torch.set_num_threads(2)` and 0.09-0.18 s with 1 thread on a
  loaded 2-core machine (`trainer.num_threads`; the default keeps torch's choice);
* denormal floats in the backward pass of a tiny random-init DETR: one profiled step 12.3 s -> 1.5 s
  with `torch.set_flush_denormal(True)` (`trainer.flush_denormal`, on by default);
* fused AdamW: the per-tensor AdamW loop was ~40% of a step (`trainer.fused_optimizer`, on by default
  where torch has the fused kernel for the parameters' device).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from finetune.trainer_config import TrainerConfig

logger = logging.getLogger(__name__)

# Devices with a fused AdamW kernel in torch 2.x (torch.optim.adamw: `_get_fused_kernels_supported_devices`).
FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")


def apply_speed_settings(trainer: TrainerConfig) -> None:
    """Set denormal flushing and the torch thread count for this process (call before training)."""
    if trainer.flush_denormal and not torch.set_flush_denormal(True):
        logger.info("flush_denormal: not supported by this CPU (no SSE3), left off")
    if trainer.num_threads is not None:
        torch.set_num_threads(trainer.num_threads)


def make_adamw(
    groups: Sequence[dict[str, Any]], lr: float, weight_decay: float, fused: bool
) -> torch.optim.AdamW:
    """AdamW over `groups`, fused when asked and the parameters' device has the kernel.

    Args:
        groups: parameter groups (`finetune.modeling.stages.param_groups`).
        lr: the default learning rate (groups may set their own).
        weight_decay: the default weight decay.
        fused: prefer the fused implementation.
    """
    params = [p for group in groups for p in group["params"]]
    use_fused = (
        fused
        and bool(params)
        and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    )
    try:
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=use_fused or None)
    except RuntimeError as error:  # a torch build or dtype without the kernel: the per-tensor loop
        logger.info("fused AdamW unavailable (%s): using the per-tensor implementation", error)
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
