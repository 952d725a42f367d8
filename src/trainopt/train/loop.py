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
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model

from .. import measure
from ..evaluate import DEFAULT_METRIC, METRICS, evaluate, is_better
from .spec import TrainStage
from . import checkpoint as ckpt
from . import distributed
from .attention import sdpa_context
from .linear_ce import check_supported
from .loss import TrainLoss, module_loss, unwrapped
from .monitor import console, progress_bar
from .optim import build_optimizer, build_scheduler
from .recovery import SpikeGuard, roll_back
from .setup import accelerate
from .state import TrainState

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 autocast where the hardware runs bf16 natively (CUDA with bf16, CPUs with AVX512-BF16/AMX
    through oneDNN), fp32 elsewhere."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


def set_determinism(seed: int, deterministic: bool) -> None:
    import random

    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def train(model, data, stage: TrainStage, ctx, stage_dir: Path, loss_fn=None,
          extra: torch.nn.Module | None = None, after_step=None, best_from_step=None) -> dict:
    """Train `model` in place on data.train; returns the stage's training summary (cost and events).

    `loss_fn(model, batch, denom)` replaces the task loss (distillation passes its own); `extra` holds
    trainable modules outside the model (e.g. projections), optimized and checkpointed with it.
    `after_step(step, total_steps)` runs after every optimizer step (gradual pruning updates its masks there);
    `best_from_step(total_steps)` gives the first step whose evaluation may count as best or stall the run
    (gradual pruning: only once the target sparsity is reached)."""
    task, device, run = ctx.recipe.task, ctx.device, ctx.recipe.run
    dd = getattr(ctx, "dist", None) or distributed.SINGLE  # data-parallel ranks (train/distributed.py)
    split = data.train
    precision = resolve_precision(stage.precision, device)
    autocast_dtype = AUTOCAST[precision]
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    metric = stage.metric or DEFAULT_METRIC[task]
    mode = METRICS[task][metric]
    fsdp = dd.enabled and stage.parallel == "fsdp"
    fused_head = task == "causal_lm" and stage.lm_loss != "full"
    as_module = loss_fn is None  # the task's loss, computed inside a TrainLoss module (compiled with the model)
    if (fused_head or fsdp) and (loss_fn is not None or extra is not None or after_step is not None):
        from ..errors import TrainoptError  # the runner refuses such recipes first; this guards the API

        raise TrainoptError(f"stage {stage.name}: lm_loss and parallel: fsdp apply to plain training only")
    if fused_head:
        from ..errors import RecipeError

        why = check_supported(model, stage.lm_loss, device)
        if why:
            raise RecipeError(f"stages.{stage.name}.lm_loss", why, "set lm_loss: full")

    def wrap_loss(m):
        return TrainLoss(m, task, stage.label_smoothing, stage.lm_loss, stage.lm_loss_chunk,
                         opaque_head=dd.enabled and stage.compile and not fsdp,
                         vocab_multiple=stage.lm_loss_vocab_multiple)

    auto_choice = None
    if stage.auto_micro_batch:  # before anything depends on the micro-batch size (train/microbatch.py)
        from . import microbatch

        model.to(device)
        model.train()
        probe_loss = (lambda m, b, d: module_loss(wrap_loss(m), b, d)) if as_module else loss_fn
        m, accum, tried = microbatch.choose(model, split, stage, probe_loss, device, autocast_dtype, dd)
        auto_choice = {"micro_batch": m, "grad_accum": accum, "tried": tried}
        ctx.log.log(stage.name, 0, event="auto_micro_batch", micro_batch=m, grad_accum=accum, tried=str(tried))
        console.print(f"auto micro-batch: {m} x {accum} accumulation (global batch {m * accum * dd.world}; tried "
                      f"{tried})")
        stage = stage.model_copy(update={"batch_size": m, "grad_accum": accum})
    micro_per_epoch = len(split.batches(stage.batch_size, run.seed, 0, bucket=ctx.recipe.data.bucket))
    per_step = stage.grad_accum * dd.world  # micro-batches of one optimizer step, over all ranks
    steps_per_epoch = math.ceil(micro_per_epoch / per_step)
    total_steps = stage.max_steps or max(1, math.ceil(stage.epochs * steps_per_epoch))
    eval_every = stage.eval_every or steps_per_epoch
    first_best = best_from_step(total_steps) if best_from_step else 0
    seq_len = split.blocks.shape[1] if task == "causal_lm" else None

    stage_dir.mkdir(parents=True, exist_ok=True)
    loss_fn = module_loss if as_module else loss_fn
    trainable = model if extra is None else torch.nn.ModuleDict({"model": model, "extra": extra})
    trainable.to(device)
    trainable.train()
    loaded_attention = getattr(model.config, "_attn_implementation", None)
    fp8_info = accelerate(model, stage)
    core = wrap_loss(model) if as_module else model
    work = model  # the module trained, evaluated and checkpointed: the model, or its FSDP2-sharded copy
    if fsdp:  # the unsharded model waits on the CPU and receives the trained weights at the end
        import copy

        core = copy.deepcopy(core)
        model.to("cpu")
        work = trainable = distributed.shard_model(core, core.model if as_module else core, autocast_dtype,
                                                   stage.fsdp_reshard)
        forward_model = work
    else:
        forward_model = distributed.wrap(dd, core, device, stage.ddp_bucket_mb, stage.ddp_comm)  # DDP on several ranks, the model itself on one
    optimizer = build_optimizer(trainable, stage.optimizer, fused=device.type == "cuda")  # after sharding
    compile_mode = None if stage.compile_mode == "default" else stage.compile_mode
    dynamic = {"auto": None, "static": False, "dynamic": True}[stage.compile_dynamic]
    graphs = stage.compile and device.type == "cuda" and stage.compile_mode.startswith("reduce-overhead")
    if graphs and task == "classification" and (dynamic is not False or not ctx.recipe.data.pad_to_multiple_of):
        console.print(f"[yellow]{stage.name}: CUDA graphs record one graph per batch shape; for one shape set "
                      f"data.pad_to_multiple_of: {ctx.recipe.data.max_length}, data.bucket: false and "
                      "compile_dynamic: static (docs/methods/acceleration.md)[/yellow]")
    if stage.compile and dynamic is False and task == "classification":  # one graph per batch width: allow them all
        spec = ctx.recipe.data
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit,
                                                   -(-spec.max_length // (spec.pad_to_multiple_of or 1)) + 8)
    compiled = "model" if stage.compile else None  # what torch.compile covers (in the training summary)
    if stage.compile and fsdp:  # per block, so that FSDP2's hooks run between compiled blocks; the loss on its own
        compiled = f"{distributed.compile_blocks(core.model if as_module else core, compile_mode, dynamic)} blocks"
        if as_module and core.compile_loss(compile_mode, dynamic):
            compiled += " + loss"
    elif stage.compile:  # compiled lazily: the first step pays the compile time (`first_step_s` in the summary)
        forward_model = torch.compile(forward_model, mode=compile_mode, dynamic=dynamic)
    scheduler = build_scheduler(optimizer, stage.schedule, total_steps)
    state = TrainState()
    ckpt_root = stage_dir / "checkpoints"
    best_file = stage_dir / "best.safetensors"

    resumed_from = None
    latest = ckpt.latest_checkpoint(ckpt_root) if ctx.resume else None
    if latest is not None:
        state = TrainState(**ckpt.load_checkpoint(latest, trainable, optimizer, scheduler, scaler, device, fsdp))
        ctx.log.truncate(stage.name, state.step)
        resumed_from = state.step
        console.print(f"[yellow]resuming {stage.name} from step {state.step} ({latest.name})[/yellow]")
    elif ckpt_root.exists() and not ctx.resume and dd.is_main:
        import shutil

        shutil.rmtree(ckpt_root)
    distributed.barrier(dd)

    fpt = None  # model FLOPs per token; set from the first batch's sequence length
    peak = measure.peak_flops(device, precision, run.peak_flops)  # per device
    peak_all = peak * dd.world if peak else None  # tokens are counted over every rank
    measure.reset_peak_memory(device)
    batches = split.batches(stage.batch_size, run.seed, state.epoch, bucket=ctx.recipe.data.bucket)
    window_tokens, window_start, window_loss, window_steps = 0, time.perf_counter(), 0.0, 0
    window_eval_s = 0.0  # evaluation time inside the window: not training throughput
    last_tps, last_mfu = None, None
    armed = distributed.fault_armed()  # fault injection for the resume/recovery tests (first attempt only)
    kill_at = int(os.environ.get("TRAINOPT_FAULT_KILL_AT_STEP", "0")) if armed else 0
    faults = {k: int(os.environ.get(f"TRAINOPT_FAULT_{k.upper()}_AT_STEP", "0")) if armed else 0
              for k in ("nan", "spike")}
    guard = SpikeGuard(stage.recovery)
    # The host reads the loss every step to decide (non-finite? spike?), which makes the CPU wait for the GPU before
    # it can launch the next step's kernels. Without recovery and with fused AdamW, the skip of a non-finite step is
    # decided on the device instead and the loss is read at log time only: on a GPU the launches overlap its work.
    lazy = not stage.recovery.enabled and scaler is None and all(g.get("fused") for g in optimizer.param_groups)
    pin = device.type == "cuda" and run.pin_memory
    lazy_bad = torch.zeros((), device=device)  # non-finite steps (skipped on the GPU) since the last flush
    lazy_loss = torch.zeros((), device=device)  # summed finite step losses since the last flush

    def flush_lazy() -> float:
        """Count the GPU-skipped steps of the window (events logged) and return the window's summed loss."""
        nonlocal lazy_bad, lazy_loss
        if not lazy:
            return 0.0
        skipped, total = int(lazy_bad.item()), lazy_loss.item()
        if skipped:
            state.skipped_nonfinite += skipped
            ctx.log.log(stage.name, state.step, event="nonfinite_skipped", count=skipped)
        lazy_bad, lazy_loss = torch.zeros_like(lazy_bad), torch.zeros_like(lazy_loss)
        return total
    from .profile import StepProfiler

    profiler = StepProfiler(stage.profile if dd.is_main else None, stage_dir / "profile", dd.rank, device)
    session_start = time.perf_counter()
    stage_start_train_seconds = state.train_seconds
    first_step_s = None

    with progress_bar(run.progress and dd.is_main, stage.name, total_steps, state.step) as update:
        while state.step < total_steps and not state.stopped_early:
            # 1. Gather the micro-batches of one optimizer step (never across an epoch boundary).
            if state.batch_in_epoch >= len(batches):
                state.epoch += 1
                state.batch_in_epoch = 0
                batches = split.batches(stage.batch_size, run.seed, state.epoch, bucket=ctx.recipe.data.bucket)
            profiler.before(state.step + 1)
            group = batches[state.batch_in_epoch: state.batch_in_epoch + per_step]
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
            fault = next((k for k, at in faults.items() if at and state.step + 1 == at), None)
            for i, (batch, weight) in enumerate(micro):
                if graphs:  # CUDA-graph trees: a new iteration, so the previous replay's outputs may be reused
                    torch.compiler.cudagraph_mark_step_begin()
                # Pinned host memory makes the copy truly asynchronous: the host keeps queueing work instead of
                # waiting for the GPU to drain before every micro-batch's copy (pageable copies are staged
                # synchronously).
                batch = {k: (v.pin_memory() if pin else v).to(device, non_blocking=True) for k, v in batch.items()}
                with distributed.no_sync(dd, forward_model, last=i == len(micro) - 1):
                    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None), \
                            sdpa_context(stage.sdpa_backend):
                        loss = loss_fn(forward_model, batch, denom) * weight
                    if fault is not None:  # injected instability (the recovery tests and `make stress`), once
                        loss = loss * (float("nan") if fault == "nan" else 1e3)
                    # DDP averages gradients over ranks; each rank's loss is its share of the global sum.
                    scaled = loss * dd.world if dd.enabled else loss
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                loss_total += loss.detach()
            distributed.sync_extra(dd, extra)
            distributed.all_sum(dd, loss_total)  # the step's loss over every rank: every rank decides alike
            if fault is not None:
                faults[fault] = 0
            if fpt is None:
                fpt = measure.flops_per_token(model, seq_len or micro[0][0]["input_ids"].shape[1])

            # 3. Step, unless the loss or the gradient is not finite, or the loss spiked: then roll back to the
            #    last checkpoint and skip the data window that led here (or, with no rollback left, skip the step).
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable.parameters(), stage.max_grad_norm or float("inf"))
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a sharded (DTensor) norm
                grad_norm = grad_norm.full_tensor()
            if lazy:  # decided on the GPU: fused AdamW skips the update (and its step count) where found_inf ≠ 0
                bad = (~torch.isfinite(loss_total) | ~torch.isfinite(grad_norm)).float()
                optimizer.found_inf = bad
                optimizer.step()
                lazy_bad += bad
                lazy_loss += torch.where(bad > 0, torch.zeros_like(loss_total), loss_total)
                finite, spike, loss_value = True, False, 0.0  # nothing to decide on the host; loss read at log time
            else:
                loss_value = loss_total.item()
                finite = math.isfinite(loss_value) and bool(torch.isfinite(grad_norm))
                spike = finite and guard.is_spike(loss_value)
            if lazy:
                pass  # applied (or skipped) above
            elif not finite or spike:
                target = ckpt.latest_checkpoint(ckpt_root) if guard.can_roll_back(state.rollbacks) else None
                if target is not None:
                    state = roll_back(target, state, trainable, optimizer, scheduler, scaler, device, stage,
                                       ctx, loss_value, "nonfinite" if not finite else "spike", guard.threshold,
                                       fsdp)
                    batches = split.batches(stage.batch_size, run.seed, state.epoch, bucket=ctx.recipe.data.bucket)
                    optimizer.zero_grad(set_to_none=True)
                    update(completed=state.step)
                    continue
                if spike:
                    state.spikes_skipped += 1
                    ctx.log.log(stage.name, state.step + 1, event="spike_skipped", loss=loss_value,
                                threshold=guard.threshold)
                    finite = False  # not applied
            else:
                guard.add(loss_value)
            if lazy:
                pass  # applied (or skipped) above
            elif finite and scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            elif finite:
                optimizer.step()
            elif not spike:
                state.skipped_nonfinite += 1
                if scaler is not None:
                    scaler.update()
                ctx.log.log(stage.name, state.step + 1, event="nonfinite_skipped", loss=loss_value)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state.step += 1
            profiler.after(state.step)
            if first_step_s is None:
                measure.sync(device)
                first_step_s = time.perf_counter() - session_start
            if after_step is not None:
                after_step(state.step, total_steps)
            state.tokens_seen += tokens
            window_tokens += tokens
            window_steps += 1
            window_loss += loss_value if math.isfinite(loss_value) else 0.0

            # 4. Log: loss, lr, tokens/s, MFU, peak memory.
            if state.step % stage.log_every == 0 or state.step == total_steps:
                window_loss += flush_lazy()
                measure.sync(device)
                elapsed = time.perf_counter() - window_start - window_eval_s
                last_tps = window_tokens / elapsed if elapsed > 0 else None
                last_mfu = (last_tps * fpt / peak_all) if (peak_all and last_tps) else None
                lr = scheduler.get_last_lr()[0]
                mem = measure.peak_memory_bytes(device)
                ctx.log.log(stage.name, state.step, loss=round(window_loss / max(window_steps, 1), 5), lr=lr,
                            grad_norm=round(float(grad_norm), 4), tokens_per_s=round(last_tps or 0, 1),
                            mfu=None if last_mfu is None else round(last_mfu, 4), epoch=state.epoch,
                            peak_mem_bytes=mem)
                update(info=f"loss {window_loss / max(window_steps, 1):.4f} lr {lr:.2e} "
                            f"{(last_tps or 0):,.0f} tok/s" + (f" MFU {last_mfu:.1%}" if last_mfu else "")
                            + f" mem {mem / 2**20:,.0f} MiB")
                window_tokens, window_start, window_loss, window_steps = 0, time.perf_counter(), 0.0, 0
                window_eval_s = 0.0
            update(advance=1)

            # 5. Evaluate on the validation split: keep the best weights, stop early when it stalls.
            if data.validation is not None and (state.step % eval_every == 0 or state.step == total_steps):
                eval_start = time.perf_counter()
                quality = evaluate(work, data.validation, task, stage.eval_batch_size, device, autocast_dtype)
                value = quality[metric]
                counts = state.step >= first_best
                improved = counts and is_better(value, state.best_metric, mode,
                                                stage.early_stopping.min_delta if stage.early_stopping else 0.0)
                if improved:
                    state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
                    if stage.keep_best:
                        _save_weights(trainable, best_file, dd, fsdp)
                    distributed.barrier(dd)
                elif counts:
                    state.evals_without_improvement += 1
                if stage.early_stopping and state.evals_without_improvement >= stage.early_stopping.patience:
                    state.stopped_early = True
                ctx.log.log(stage.name, state.step, **{f"val_{k}": v for k, v in quality.items()
                                                       if isinstance(v, (int, float))}, best=improved)
                window_eval_s += time.perf_counter() - eval_start
                if ctx.hooks.on_eval is not None:  # a tuning study's pruner (may stop the trial)
                    ctx.hooks.on_eval(stage.name, state.step, quality)

            # 6. Checkpoint atomically (model, optimizer, scheduler, RNG, data position).
            state.train_seconds = stage_start_train_seconds + (time.perf_counter() - session_start)
            if stage.checkpoint_every and (state.step % stage.checkpoint_every == 0):
                window_loss += flush_lazy()
                states = distributed.full_state(work, optimizer) if fsdp else None  # a collective
                if dd.is_main:
                    ckpt.save_checkpoint(ckpt_root, state.step, trainable, optimizer, scheduler, scaler,
                                         asdict(state), states=states)
                distributed.barrier(dd)
            if kill_at and state.step == kill_at:  # fault injection: SIGKILL when this process reaches the step
                os.kill(os.getpid(), 9)

    profiler.close()
    flush_lazy()
    if fsdp:  # the trained weights, gathered, into the unsharded model
        full, _ = distributed.full_state(work, everywhere=True)
        model.load_state_dict(unwrapped(full))
        model.to(device)
        trainable = model
    if stage.activation_checkpointing and getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()
    if stage.keep_best and state.best_step is not None and best_file.is_file() and state.best_step != state.step:
        st_load_model(trainable, str(best_file), device=str(device))
        console.print(f"restored the best weights (step {state.best_step}, val {metric} {state.best_metric})")
    if fp8_info:  # the model goes back to its own modules (and state dict layout) for saving and later stages
        from . import fp8

        fp8.disable(model)
    if stage.attention in ("sdpa_causal", "fa4") and loaded_attention:
        # training kernels: measurement, later stages and the saved model run the attention the model loaded with
        # (FA4 takes bf16 only; the measured fp32 model would be refused)
        model.set_attn_implementation(loaded_attention)
    wall = stage_start_train_seconds + (time.perf_counter() - session_start)
    return {
        "steps": state.step, "total_steps": total_steps, "train_examples": len(split), "epochs_done": round(state.step / steps_per_epoch, 3),
        "tokens_seen": state.tokens_seen, "skipped_nonfinite_steps": state.skipped_nonfinite,
        "best_step": state.best_step, "best_val_metric": state.best_metric, "metric": metric,
        "stopped_early": state.stopped_early, "resumed_from_step": resumed_from,
        "rollbacks": state.rollbacks, "spikes_skipped": state.spikes_skipped, "lr_scale": state.lr_scale,
        "skipped_batches": state.skipped_batches,
        "train_wall_s": round(wall, 2),
        "tokens_per_s": round(state.tokens_seen / wall, 1) if wall > 0 else None,
        "mfu": None if (peak_all is None or fpt is None or wall <= 0) else float(
            f"{state.tokens_seen * fpt / wall / peak_all:.4g}"),  # significant digits: a tiny MFU is not 0
        "micro_batch": stage.batch_size, "grad_accum": stage.grad_accum, "auto_micro_batch": auto_choice,
        "world_size": dd.world, "compiled": compiled, "fp8": fp8_info,
        "first_step_s": None if first_step_s is None else round(first_step_s, 3),
        "precision": precision, "peak_flops": peak, "flops_per_token": fpt,
        "peak_mem_bytes": measure.peak_memory_bytes(device),
    }


def _save_weights(trainable, path: Path, dd, sharded: bool) -> None:
    """The best weights so far, atomically: rank 0 writes them (gathered from every rank's shard under FSDP2)."""
    tmp = path.with_name(path.name + ".tmp")
    if sharded:
        full, _ = distributed.full_state(trainable)  # a collective: every rank joins
        if not dd.is_main:
            return
        ckpt.save_full_weights(unwrapped(full), tmp)
    elif dd.is_main:
        st_save_model(trainable, str(tmp))
    else:
        return
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
