"""Exponential moving average (EMA) of the trainable weights, evaluated and saved instead of the raw ones.

Small-data fine-tuning is noisy from step to step; RF-DETR and YOLO keep an EMA of the weights and report
it. `WeightEma` keeps a float32 shadow of every parameter that requires grad in the current stage (the
frozen ones do not move, so they need no shadow) and updates it after every optimiser step:

    decay_t = decay * (1 - exp(-t / tau))        (t = updates so far; tau = warm-up in updates)
    shadow  = decay_t * shadow + (1 - decay_t) * weight

The warm-up (RF-DETR's, from YOLOv5) makes the EMA follow the weights closely at the start of a stage,
when they are far from converged. `applied(model)` swaps the shadow in for evaluation / saving and the
raw weights back afterwards; `copy_to(model)` keeps the shadow for good (the end of a stage).

`state_dict`/`load_state_dict` make it checkpointable with `accelerator.register_for_checkpointing`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class WeightEma:
    """EMA of the trainable parameters of a model.

    Args:
        model: the unwrapped model; its parameters with `requires_grad` are tracked (by name).
        decay: the asymptotic decay (0.999 ~ an average over the last ~1000 updates).
        tau: warm-up length in updates (the decay reaches 63% of `decay` after `tau` updates).
    """

    def __init__(self, model: torch.nn.Module, decay: float, tau: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if tau < 0:
            raise ValueError(f"EMA warm-up tau must be >= 0, got {tau}")
        self.decay, self.tau, self.updates = decay, tau, 0
        self.shadow = {
            name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad
        }

    def current_decay(self) -> float:
        """The decay of the next update (warm-up included)."""
        if self.tau == 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-(self.updates + 1) / self.tau))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Blend the model's current trainable weights into the shadow (call after each optimiser step)."""
        decay = self.current_decay()
        for name, p in model.named_parameters():
            shadow = self.shadow.get(name)
            if shadow is not None:
                shadow.lerp_(p.detach().float(), 1.0 - decay)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Overwrite the tracked weights of `model` with the shadow."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Temporarily put the shadow weights into `model` (evaluation, saving), then restore the raw ones."""
        backup = {name: p.detach().clone() for name, p in model.named_parameters() if name in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in backup:
                        p.copy_(backup[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "tau": self.tau, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.tau, self.updates = state["decay"], state["tau"], state["updates"]
        self.shadow = {name: t.float().clone() for name, t in state["shadow"].items()}
