"""Instability recovery: loss-spike detection and the rollback to the last checkpoint (skip the data window that led
to the bad step, lower the learning rate)."""

from __future__ import annotations

from pathlib import Path

from . import checkpoint as ckpt
from .monitor import console
from .state import TrainState


class SpikeGuard:
    """Loss-spike detection on a rolling window of recent step losses: a spike is a loss above
    median + k · MAD (the median absolute deviation, floored at 1% of the median so that a flat loss curve does not
    make every wiggle a spike). Hand-written: a few lines over a deque, no library does this for a training loop."""

    def __init__(self, spec):
        from collections import deque

        self.spec = spec
        self.losses: deque[float] = deque(maxlen=spec.window)
        self.threshold: float | None = None

    def add(self, loss: float) -> None:
        self.losses.append(loss)

    def is_spike(self, loss: float) -> bool:
        if not self.spec.enabled or len(self.losses) < self.spec.min_history:
            self.threshold = None
            return False
        ordered = sorted(self.losses)
        median = ordered[len(ordered) // 2]
        mad = sorted(abs(x - median) for x in ordered)[len(ordered) // 2]
        self.threshold = median + self.spec.spike_k * max(mad, 0.01 * abs(median))
        return loss > self.threshold

    def can_roll_back(self, rollbacks: int) -> bool:
        return self.spec.enabled and rollbacks < self.spec.max_rollbacks


def roll_back(target: Path, state: TrainState, trainable, optimizer, scheduler, scaler, device, stage, ctx,
               loss_value: float, reason: str, threshold: float | None, sharded: bool = False) -> TrainState:
    """Restore the checkpoint `target`, keep the data position past the bad step (the window between the checkpoint
    and the bad step is skipped, not replayed), and multiply the learning rate by `lr_factor`."""
    here = (state.epoch, state.batch_in_epoch)
    restored = TrainState(**ckpt.load_checkpoint(target, trainable, optimizer, scheduler, scaler, device, sharded))
    skipped = _batches_between(restored, here, stage, ctx)
    factor = stage.recovery.lr_factor
    scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    keep = {k: getattr(state, k) for k in ("tokens_seen", "skipped_nonfinite", "spikes_skipped", "train_seconds",
                                           "skipped_batches")}
    restored.__dict__.update(keep)
    restored.epoch, restored.batch_in_epoch = here
    restored.rollbacks = state.rollbacks + 1
    restored.lr_scale = state.lr_scale * factor
    restored.skipped_batches += skipped
    ctx.log.log(stage.name, state.step + 1, event=f"rollback_{reason}", loss=loss_value, threshold=threshold,
                to_step=restored.step, skipped_batches=skipped, lr_scale=restored.lr_scale)
    console.print(f"[yellow]{reason} at step {state.step + 1} (loss {loss_value:.4g}): rolled back to step "
                  f"{restored.step}, skipped {skipped} batches, learning rate x{restored.lr_scale:g}[/yellow]")
    return restored


def _batches_between(restored: TrainState, here: tuple[int, int], stage, ctx) -> int:
    """Micro-batches from the restored data position up to `here` (epoch, batch): the skipped window."""
    epoch, batch = restored.epoch, restored.batch_in_epoch
    if epoch == here[0]:
        return here[1] - batch
    per_epoch = len(ctx.data.train.batches(stage.batch_size, ctx.recipe.run.seed, 0, bucket=ctx.recipe.data.bucket))
    return (per_epoch - batch) + per_epoch * (here[0] - epoch - 1) + here[1]
