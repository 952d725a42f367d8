"""Where training stands: what a checkpoint saves besides the weights, optimizer and scheduler."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken (skipped non-finite steps included)
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    tokens_seen: int = 0
    skipped_nonfinite: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0  # summed over resumes
    rollbacks: int = 0  # instability recoveries (rollback + skipped data window + lower learning rate)
    spikes_skipped: int = 0  # spikes found once no rollback was possible: the step was skipped, not applied
    lr_scale: float = 1.0  # product of the rollbacks' learning-rate factors
    skipped_batches: int = 0  # micro-batches in the skipped data windows
