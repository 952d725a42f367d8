"""The training loop, readable top to bottom.

One optimizer step = `grad_accum` micro-batches; the loss is summed over the micro-batches and divided by
the number of items (classification) or predicted tokens (causal LM) in the whole accumulated batch, so
accumulation gives the same update as one big batch. A step whose loss or gradient is not finite, or whose loss
spikes above the rolling median + k·MAD, is never applied: training rolls back to the last checkpoint, skips the
data window that led there and lowers the learning rate (`recovery:`), or, with no checkpoint or rollback left,
skips the step. Checkpoints are atomic; a killed run resumes exactly where it stopped.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .. import measure
from . import checkpoint as ckpt
from . import distributed
from .attention import sdpa_context
from .monitor import Window, console, progress_bar
from .recovery import StepGate
from .setup import build, finish, restore_model
from .spec import TrainStage
from .state import TrainState
from .validation import Validator


def train(model, data, stage: TrainStage, ctx, stage_dir: Path, loss_fn=None,
          extra: torch.nn.Module | None = None, after_step=None, best_from_step=None,
          trainable_only: bool = False) -> dict:
    """Train `model` in place on data.train; returns the stage's training summary (cost and events).

    `loss_fn(model, batch, denom)` replaces the task loss (distillation passes its own); `extra` holds
    trainable modules outside the model (e.g. projections), optimized and checkpointed with it.
    `after_step(step, total_steps)` runs after every optimizer step (gradual pruning updates its masks there);
    `best_from_step(total_steps)` gives the first step whose evaluation may count as best or stall the run
    (gradual pruning: only once the target sparsity is reached). `trainable_only`: checkpoints and best weights hold
    the parameters that train, not the frozen rest (LoRA)."""
    device, run, bucket = ctx.device, ctx.recipe.run, ctx.recipe.data.bucket
    dd = ctx.dist or distributed.SINGLE  # data-parallel ranks (train/distributed.py)
    split, faults = data.train, ctx.hooks.faults
    seq_len = split.blocks.shape[1] if ctx.recipe.task == "causal_lm" else None  # else each batch's width
    stage_dir.mkdir(parents=True, exist_ok=True)
    e = build(model, data, stage, ctx, dd, loss_fn, extra, plain=after_step is None, trainable_only=trainable_only)
    stage, optimizer, scheduler = e.stage, e.optimizer, e.scheduler
    ckpt_root = stage_dir / "checkpoints"
    state, resumed_from = _start(e, ctx, dd, ckpt_root)
    validator = Validator(e, data, ctx, dd, stage_dir / "best.safetensors",
                          best_from_step(e.total_steps) if best_from_step else 0)
    background = stage.async_checkpoint == "on" or (stage.async_checkpoint == "auto" and device.type == "cuda")
    writer = ckpt.Writer(background and dd.is_main)
    gate = StepGate(e, ckpt_root, ctx, writer)
    peak = measure.peak_flops(device, e.precision, run.peak_flops)  # per device
    window = Window(stage.name, ctx.log, device, peak * dd.world if peak else None)  # tokens count over all ranks
    measure.reset_peak_memory(device)
    batches = split.batches(stage.batch_size, run.seed, state.epoch, bucket=bucket)
    pin = device.type == "cuda" and run.pin_memory
    from .profile import StepProfiler

    profiler = StepProfiler(stage.profile if dd.is_main else None, stage_dir / "profile", dd.rank, device)
    session_start, earlier_seconds, first_step_s = time.perf_counter(), state.train_seconds, None

    with progress_bar(run.progress and dd.is_main, stage.name, e.total_steps, state.step) as update:
        while state.step < e.total_steps and not state.stopped_early:
            # 1. Gather the micro-batches of one optimizer step (never across an epoch boundary).
            if state.batch_in_epoch >= len(batches):
                state.epoch += 1
                state.batch_in_epoch = 0
                batches = split.batches(stage.batch_size, run.seed, state.epoch, bucket=bucket)
            profiler.before(state.step + 1)
            group = batches[state.batch_in_epoch: state.batch_in_epoch + e.per_step]
            state.batch_in_epoch += len(group)
            # This rank's share: every world-th micro-batch (weight 0: padding so that every rank joins the sync).
            mine = distributed.shard(dd, group, math.ceil(len(group) / dd.world))
            micro = [(split.collate(idx), w) for idx, w in mine]
            # The whole step's items and tokens over every rank, counted from the group every rank holds (no
            # collective, no device sync).
            denom = sum(split.count(idx)[0] for idx in group)
            tokens = sum(split.count(idx)[1] for idx in group)

            # 2. Forward and backward, the loss normalised over the whole accumulated batch.
            loss_total = torch.zeros((), device=device)
            fault = faults.take_loss_fault(state.step + 1)  # injected instability (recovery tests, `make stress`)
            for i, (batch, weight) in enumerate(micro):
                if e.graphs:  # CUDA-graph trees: a new iteration, so the previous replay's outputs may be reused
                    torch.compiler.cudagraph_mark_step_begin()
                # Pinned host memory makes the copy truly asynchronous: the host keeps queueing work instead of
                # waiting for the GPU to drain before every micro-batch's copy (pageable copies are staged
                # synchronously).
                batch = {k: (v.pin_memory() if pin else v).to(device, non_blocking=True) for k, v in batch.items()}
                with distributed.no_sync(dd, e.forward_model, last=i == len(micro) - 1):
                    with torch.autocast(device.type, dtype=e.autocast_dtype, enabled=e.autocast_dtype is not None), \
                            sdpa_context(stage.sdpa_backend):
                        loss = faults.corrupt(e.loss_fn(e.forward_model, batch, denom) * weight, fault)
                    # DDP averages gradients over ranks; each rank's loss is its share of the global sum.
                    scaled = loss * dd.world if dd.enabled else loss
                    (e.scaler.scale(scaled) if e.scaler is not None else scaled).backward()
                loss_total += loss.detach()
            distributed.sync_extra(dd, extra)
            distributed.all_sum(dd, loss_total)  # the step's loss over every rank: every rank decides alike
            if window.flops_per_token is None:
                window.flops_per_token = measure.flops_per_token(model, seq_len or micro[0][0]["input_ids"].shape[1])

            # 3. Step, unless the loss or the gradient is not finite, or the loss spiked: then roll back to the
            #    last checkpoint and skip the data window that led here (or, with no rollback left, skip the step).
            if e.scaler is not None:
                e.scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(e.trainable.parameters(), stage.max_grad_norm or float("inf"))
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a sharded (DTensor) norm
                grad_norm = grad_norm.full_tensor()
            state, loss_value, rolled_back = gate.apply(state, loss_total, grad_norm)
            optimizer.zero_grad(set_to_none=True)
            if rolled_back:
                batches = split.batches(stage.batch_size, run.seed, state.epoch, bucket=bucket)
                update(completed=state.step)
                continue
            scheduler.step()
            state.step += 1
            profiler.after(state.step)
            if first_step_s is None:
                measure.sync(device)
                first_step_s = time.perf_counter() - session_start
            if after_step is not None:
                after_step(state.step, e.total_steps)
            state.tokens_seen += tokens
            window.add(tokens, loss_value)

            # 4. Log: loss, lr, tokens/s, MFU, peak memory.
            if state.step % stage.log_every == 0 or state.step == e.total_steps:
                window.loss += gate.flush(state)
                window.close(state.step, state.epoch, scheduler.get_last_lr()[0], grad_norm, update)
            update(advance=1)

            # 5. Evaluate on the validation split: keep the best weights, stop early when it stalls.
            if validator.due(state.step):
                window.eval_s += validator.run(state)

            # 6. Checkpoint atomically (model, optimizer, scheduler, RNG, data position).
            state.train_seconds = earlier_seconds + (time.perf_counter() - session_start)
            if stage.checkpoint_every and (state.step % stage.checkpoint_every == 0):
                window.loss += gate.flush(state)
                states = distributed.full_state(e.work, optimizer) if e.fsdp else None  # a collective
                if dd.is_main:
                    writer.save(ckpt_root, state.step, e.trainable, optimizer, scheduler, e.scaler, asdict(state),
                                states=states, faults=faults)
                distributed.barrier(dd)
            faults.kill_after(state.step)

    profiler.close()
    writer.wait()
    gate.flush(state)
    validator.restore_best(state, finish(e, model, device))
    restore_model(e, model)
    wall = earlier_seconds + (time.perf_counter() - session_start)
    return _summary(e, state, validator, window, wall, len(split), dd.world, peak, resumed_from, first_step_s,
                    device)


def _start(e, ctx, dd, ckpt_root: Path) -> tuple[TrainState, int | None]:
    """The state to start from: the latest checkpoint on --resume (this stage's later log lines forgotten), else a
    fresh one (a previous attempt's checkpoints removed)."""
    latest = ckpt.latest_checkpoint(ckpt_root) if ctx.resume else None
    state, resumed_from = TrainState(), None
    if ctx.resume and dd.is_main:
        # a killed process's half-written checkpoint folders (never taken for checkpoints) are removed now, not at
        # the stage's end; with no checkpoint to resume, the dead process's logged steps are forgotten too
        for tmp in ckpt_root.glob(".tmp-*") if ckpt_root.is_dir() else []:
            shutil.rmtree(tmp, ignore_errors=True)
        if latest is None:
            ctx.log.truncate(e.stage.name, 0)
    if latest is not None:
        state = TrainState(**ckpt.load_checkpoint(latest, e.trainable, e.optimizer, e.scheduler, e.scaler,
                                                  ctx.device, e.fsdp))
        ctx.log.truncate(e.stage.name, state.step)
        resumed_from = state.step
        console.print(f"[yellow]resuming {e.stage.name} from step {state.step} ({latest.name})[/yellow]")
    elif ckpt_root.exists() and not ctx.resume and dd.is_main:
        shutil.rmtree(ckpt_root)
    distributed.barrier(dd)
    return state, resumed_from


def _summary(e, state: TrainState, validator: Validator, window: Window, wall: float, examples: int, world: int,
             peak, resumed_from, first_step_s, device) -> dict:
    fpt, peak_all = window.flops_per_token, window.flops_peak
    steady = window.steady()
    return {
        "steps": state.step, "total_steps": e.total_steps, "train_examples": examples,
        "epochs_done": round(state.step / e.steps_per_epoch, 3),
        "tokens_seen": state.tokens_seen, "skipped_nonfinite_steps": state.skipped_nonfinite,
        "best_step": state.best_step, "best_val_metric": state.best_metric, "metric": validator.metric,
        "stopped_early": state.stopped_early, "resumed_from_step": resumed_from,
        "rollbacks": state.rollbacks, "spikes_skipped": state.spikes_skipped, "lr_scale": state.lr_scale,
        "skipped_batches": state.skipped_batches,
        "train_wall_s": round(wall, 2),
        "tokens_per_s": round(state.tokens_seen / wall, 1) if wall > 0 else None,
        "mfu": None if (peak_all is None or fpt is None or wall <= 0) else float(
            f"{state.tokens_seen * fpt / wall / peak_all:.4g}"),  # significant digits: a tiny MFU is not 0
        # the whole stage's rate above counts compile, evaluations and checkpoints; the steady state is the median
        # log window after the first (Window.steady), evaluations left out
        "steady_tokens_per_s": steady[0], "steady_mfu": steady[1], "eval_s": round(window.eval_seconds, 2),
        "micro_batch": e.stage.batch_size, "grad_accum": e.stage.grad_accum, "auto_micro_batch": e.auto_choice,
        "world_size": world, "compiled": e.compiled, "fp8": e.fp8_info,
        "first_step_s": None if first_step_s is None else round(first_step_s, 3),
        "precision": e.precision, "peak_flops": peak, "flops_per_token": fpt,
        "peak_mem_bytes": measure.peak_memory_bytes(device),
    }
