"""`best_<stage>/`: the best evaluated weights of a stage, written when a checkpoint is, not at every improvement.

An evaluation that beats the stage's best keeps a CPU copy of the weights (`remember`); `flush` writes the
kept copies as loadable model folders (`save_model_folder`) right before each checkpoint, so that
`best_<stage>/` on disk always matches the `best_metric` of the newest checkpoint (a resumed run continues
from a consistent pair), while a run with sparse checkpoints (`run.save_every_epochs`) writes each best
model once instead of at every improvement. The last epoch of a stage always checkpoints, so every
stage ends with its `best_<stage>/` written.

The copy is saved through a fresh model of the same class on the CPU (its random init under
`torch.random.fork_rng`, so that the training RNG stream, and hence resuming, is unaffected), never by
touching the model being trained.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class BestModelKeeper:
    """The pending best weights per stage folder, and how to write them (main process only).

    Attributes:
        write: `write(model, folder, results)` saves a loadable model folder.
        pending: {folder: (model class, config, CPU state dict, results)} not yet written.
    """

    write: Callable[[torch.nn.Module, Path, dict[str, Any]], None]
    pending: dict[Path, tuple[type, Any, dict[str, torch.Tensor], dict[str, Any]]] = field(default_factory=dict)

    def remember(self, model: torch.nn.Module, folder: Path, results: dict[str, Any]) -> None:
        """Keep a CPU copy of `model`'s weights as the best of `folder` (replacing an older one)."""
        state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
        self.pending[Path(folder)] = (type(model), copy.deepcopy(model.config), state, dict(results))

    def flush(self) -> None:
        """Write every pending best model, then forget it."""
        for folder, (model_class, config, state, results) in list(self.pending.items()):
            with torch.random.fork_rng(devices=[]):
                model = model_class(config)
            model.load_state_dict(state, strict=True)
            self.write(model, folder, results)
            del self.pending[folder]
