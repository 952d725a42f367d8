"""Instability recovery: loss-spike detection and the rollback to the last checkpoint (skip the data window that led
to the bad step, lower the learning rate)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .monitor import console
from .state import TrainState


class SpikeGuard:
    """Loss-spike detection on a rolling window of recent step losses. A loss is a spike when it clears all of
      - median + k · MAD (the median absolute deviation, floored at 1% of the median so that a flat loss curve does
        not make every wiggle a spike),
      - the window's highest loss by `tail` times that maximum's own height above the median, and
      - median + `min_rise` times the stage's starting loss (the median of its first `min_history` losses).
    The last two keep healthy training quiet: late in a fine-tune most batches score ~0.005 and a few 0.1-0.8 (one or
    two hard or mislabelled examples); the MAD is tiny, and median + k·MAD alone fired 121 times on two clean 8-epoch
    runs (the tail bound alone: 49; benchmarks/spike_guard_replay.py, RESULTS.md). A blow-up takes the loss back above where the stage
    started (x1000, a diverging step); a hard batch late in training (0.78 after a median of 0.06, measured) does not.
    Hand-written: a few lines over a deque, no library does this for a training loop."""

    def __init__(self, spec):
        from collections import deque

        self.spec = spec
        self.losses: deque[float] = deque(maxlen=spec.window)
        self.threshold: float | None = None
        self.start: float | None = None  # the stage's starting loss level, fixed once min_history losses are in
        self._first: list[float] = []

    def add(self, loss: float) -> None:
        self.losses.append(loss)
        if self.start is None:
            self._first.append(loss)
            if len(self._first) >= self.spec.min_history:
                self.start = sorted(self._first)[len(self._first) // 2]

    def is_spike(self, loss: float) -> bool:
        if not self.spec.enabled or len(self.losses) < self.spec.min_history:
            self.threshold = None
            return False
        self.threshold = spike_threshold(list(self.losses), self.spec.spike_k, self.spec.tail,
                                         self.spec.min_rise * abs(self.start or 0.0))
        return loss > self.threshold

    def can_roll_back(self, rollbacks: int) -> bool:
        return self.spec.enabled and rollbacks < self.spec.max_rollbacks


def spike_threshold(losses: list[float], k: float, tail: float, rise: float = 0.0) -> float:
    """The loss above which a step is a spike, given the recent healthy losses and the smallest rise above their
    median that counts (SpikeGuard)."""
    ordered = sorted(losses)
    median = ordered[len(ordered) // 2]
    mad = sorted(abs(x - median) for x in ordered)[len(ordered) // 2]
    return max(median + k * max(mad, 0.01 * abs(median)), ordered[-1] + tail * (ordered[-1] - median),
               median + rise)


class StepGate:
    """Decides, once a step's gradients are in, whether the optimizer applies it. A step whose loss or gradient is
    not finite, or whose loss spiked, is rolled back to the last checkpoint when a rollback is left (the caller
    re-reads the epoch's batches), else skipped. `apply` returns (state, the step's loss, rolled back?).

    The host reads the loss every step to decide, which makes the CPU wait for the GPU before it can launch the next
    step's kernels. Without recovery and with fused AdamW ("lazy"), the skip of a non-finite step is decided on the
    device instead and the loss is read at log time only (`flush`): on a GPU the launches overlap its work."""

    def __init__(self, engine, ckpt_root: Path, ctx, writer: ckpt.Writer | None = None):
        stage, device = engine.stage, ctx.device
        self.engine, self.ckpt_root, self.ctx, self.name = engine, ckpt_root, ctx, stage.name
        self.writer = writer  # a checkpoint being written in the background is finished before a rollback
        self.guard = SpikeGuard(stage.recovery)
        self.lazy = (not stage.recovery.enabled and engine.scaler is None
                     and all(g.get("fused") for g in engine.optimizer.param_groups))
        self.bad = torch.zeros((), device=device)  # non-finite steps (skipped on the GPU) since the last flush
        self.loss = torch.zeros((), device=device)  # summed finite step losses since the last flush

    def apply(self, state: TrainState, loss_total: torch.Tensor, grad_norm: torch.Tensor):
        e = self.engine
        optimizer, scaler = e.optimizer, e.scaler
        if self.lazy:  # fused AdamW skips the update (and its step count) where found_inf ≠ 0
            bad = (~torch.isfinite(loss_total) | ~torch.isfinite(grad_norm)).float()
            optimizer.found_inf = bad
            optimizer.step()
            self.bad += bad
            self.loss += torch.where(bad > 0, torch.zeros_like(loss_total), loss_total)
            return state, 0.0, False  # nothing decided on the host; the loss is read at log time
        loss_value = loss_total.item()
        finite = math.isfinite(loss_value) and bool(torch.isfinite(grad_norm))
        spike = finite and self.guard.is_spike(loss_value)
        if finite and not spike:
            self.guard.add(loss_value)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            return state, loss_value, False
        reason = "nonfinite" if not finite else "spike"
        if self.writer is not None and self.guard.can_roll_back(state.rollbacks):
            self.writer.wait()
        target = ckpt.latest_checkpoint(self.ckpt_root) if self.guard.can_roll_back(state.rollbacks) else None
        if target is not None:
            state = roll_back(target, state, e.trainable, optimizer, e.scheduler, scaler, self.ctx.device, e.stage,
                              self.ctx, loss_value, reason, self.guard.threshold, e.fsdp)
            return state, loss_value, True
        if spike:
            state.spikes_skipped += 1
            self.ctx.log.log(self.name, state.step + 1, event="spike_skipped", loss=loss_value,
                             threshold=self.guard.threshold)
        else:
            state.skipped_nonfinite += 1
            if scaler is not None:
                scaler.update()
            self.ctx.log.log(self.name, state.step + 1, event="nonfinite_skipped", loss=loss_value)
        return state, loss_value, False

    def flush(self, state: TrainState) -> float:
        """Lazy mode: count the GPU-skipped steps since the last flush (events logged); their summed loss."""
        if not self.lazy:
            return 0.0
        skipped, total = int(self.bad.item()), self.loss.item()
        if skipped:
            state.skipped_nonfinite += skipped
            self.ctx.log.log(self.name, state.step, event="nonfinite_skipped", count=skipped)
        self.bad, self.loss = torch.zeros_like(self.bad), torch.zeros_like(self.loss)
        return total


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
