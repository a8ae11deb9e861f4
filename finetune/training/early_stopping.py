"""Early stopping of a stage on its validation metric (box mAP in `detection`, PQ in `masks`).

RF-DETR stops on mAP; for panoptic segmentation the metric that matters is PQ, which only the `masks`
stage computes, so each stage stops on its own metric. `patience` counts *evaluations* (every
`eval.eval_every_epochs` epochs) without an improvement of more than `min_delta` over the best so far.
The count is saved with every checkpoint (`TrainerState.early_stopping`), so a resumed stage stops
where an uninterrupted one would. A stopped stage keeps the weights of its last epoch in `final/`; the
best epoch is in `best_<stage>/` as always.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EarlyStopping:
    """Tracks the best metric of a stage and says when to stop.

    Attributes:
        patience: evaluations without improvement before stopping (0 = never stop).
        min_delta: an improvement must exceed this to reset the count.
        best: the best metric so far (None before the first evaluation).
        bad_evaluations: evaluations since the last improvement.
    """

    patience: int
    min_delta: float = 0.0
    best: float | None = None
    bad_evaluations: int = 0

    def should_stop(self, metric: float) -> bool:
        """Record one evaluation's metric; True when the stage should stop now."""
        if self.best is None or metric > self.best + self.min_delta:
            self.best, self.bad_evaluations = metric, 0
            return False
        self.bad_evaluations += 1
        return self.patience > 0 and self.bad_evaluations >= self.patience
