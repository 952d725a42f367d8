"""Everything the loop needs before its first step, built once into an `Engine`: the precision and its grad scaler,
the loss module, the auto micro-batch, the step plan (steps per epoch, total steps, evaluation cadence), the
model-side switches (attention kernel, activation checkpointing, fp8), data parallelism (DDP or FSDP2), the optimizer,
torch.compile and the scheduler; and `finish()`, which gives the model back as it was loaded (unsharded, its own
attention and modules) once training ends."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from ..errors import RecipeError, TrainoptError
from . import distributed
from . import fa4  # noqa: F401 — registers `attention: fa4` into train/attention.py
from .attention import switch
from .linear_ce import check_supported
from .loss import TrainLoss, module_loss, unwrapped
from .monitor import console
from .optim import build_optimizer, build_scheduler

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


@dataclass
class Engine:
    stage: object  # the TrainStage, with the auto micro-batch's choice applied
    precision: str  # resolved: fp32 | bf16 | fp16
    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None  # fp16 only
    loss_fn: object  # loss_fn(forward_model, batch, denom)
    trainable: torch.nn.Module  # what the optimizer updates and a checkpoint holds (the model, its extras)
    work: torch.nn.Module  # the module evaluated and saved as best: the model, or its FSDP2-sharded copy
    forward_model: torch.nn.Module  # what a micro-batch runs through: DDP / compile wrappers around the loss module
    optimizer: torch.optim.Optimizer
    scheduler: object
    fsdp: bool
    graphs: bool  # CUDA graphs (compile_mode reduce-overhead): a new graph-tree iteration per micro-batch
    compiled: str | None  # what torch.compile covers (in the training summary)
    fp8_info: dict | None
    auto_choice: dict | None  # the auto micro-batch's choice and what it tried
    per_step: int  # micro-batches of one optimizer step, over all ranks
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    loaded_attention: str | None  # the attention the model was loaded with (restored by finish())


class TrainableOnly(torch.nn.Module):
    """What a checkpoint and the best weights hold when most of a model stays frozen (LoRA: the adapters, not the
    base): its state dict is the parameters that train. The frozen ones are rebuilt at the stage's start exactly as
    before (loaded from the parent's folder), so a resume restores the same model from a checkpoint of megabytes."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        self._keys = {f"module.{n}" for n, p in module.named_parameters() if p.requires_grad}

    def state_dict(self, *args, **kwargs):
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if k in self._keys}

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if k in self._keys]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"checkpoint does not match the trained parameters: missing {missing[:3]}, "
                               f"unexpected {result.unexpected_keys[:3]}")
        return torch.nn.modules.module._IncompatibleKeys(missing, result.unexpected_keys)


def build(model, data, stage, ctx, dd, loss_fn=None, extra: torch.nn.Module | None = None,
          plain: bool = True, trainable_only: bool = False) -> Engine:
    """`loss_fn` replaces the task's loss module; `extra` holds trainable modules outside the model; `plain`: no
    per-step callback either (the fused LM head and FSDP2 apply to plain training only); `trainable_only`:
    checkpoints hold the parameters that train, not the frozen rest (TrainableOnly)."""
    task, device, run = ctx.recipe.task, ctx.device, ctx.recipe.run
    precision = resolve_precision(stage.precision, device)
    autocast_dtype = AUTOCAST[precision]
    fsdp = dd.enabled and stage.parallel == "fsdp"
    fused_head = task == "causal_lm" and stage.lm_loss != "full"
    as_module = loss_fn is None  # the task's loss, computed inside a TrainLoss module (compiled with the model)
    if (fused_head or fsdp) and not (as_module and extra is None and plain):
        # validate.py refuses such recipes before any work; this guards the Python API
        raise TrainoptError(f"stage {stage.name}: lm_loss and parallel: fsdp apply to plain training only")
    if fused_head:
        why = check_supported(model, stage.lm_loss, device)
        if why:
            raise RecipeError(stage.key_of("lm_loss"), why, "set lm_loss: full")

    sft = ctx.recipe.data.sft
    sparse = sft is not None and sft.loss_on == "response" and stage.lm_loss == "chunked"

    def wrap_loss(m):
        return TrainLoss(m, task, stage.label_smoothing, stage.lm_loss, stage.lm_loss_chunk,
                         opaque_head=dd.enabled and stage.compile and not fsdp,
                         vocab_multiple=stage.lm_loss_vocab_multiple, sparse_targets=sparse)

    auto_choice = None
    if stage.auto_micro_batch:  # before anything depends on the micro-batch size (train/microbatch.py)
        stage, auto_choice = _auto_micro_batch(model, data.train, stage, ctx, dd, autocast_dtype,
                                               (lambda m, b, d: module_loss(wrap_loss(m), b, d)) if as_module
                                               else loss_fn)
    micro_per_epoch = len(data.train.batches(stage.batch_size, run.seed, 0, bucket=ctx.recipe.data.bucket))
    per_step = stage.grad_accum * dd.world
    steps_per_epoch = math.ceil(micro_per_epoch / per_step)
    total_steps = stage.max_steps or max(1, math.ceil(stage.epochs * steps_per_epoch))

    trainable = model if extra is None else torch.nn.ModuleDict({"model": model, "extra": extra})
    if trainable_only:
        if fsdp:
            raise TrainoptError(f"stage {stage.name}: a partly frozen model trains with parallel: ddp only")
        trainable = TrainableOnly(trainable)
    trainable.to(device)
    trainable.train()
    loaded_attention = getattr(model.config, "_attn_implementation", None)
    fp8_info = accelerate(model, stage)
    core = wrap_loss(model) if as_module else model
    work = model
    if fsdp:  # the unsharded model waits on the CPU and receives the trained weights in finish()
        import copy

        core = copy.deepcopy(core)
        model.to("cpu")
        work = trainable = distributed.shard_model(core, core.model if as_module else core, autocast_dtype,
                                                   stage.fsdp_reshard)
        forward_model = work
    else:  # DDP on several ranks, the model itself on one
        forward_model = distributed.wrap(dd, core, device, stage.ddp_bucket_mb, stage.ddp_comm)
    optimizer = build_optimizer(trainable, stage.optimizer, fused=device.type == "cuda")  # after sharding
    forward_model, compiled, graphs = _compile(forward_model, core, stage, ctx, fsdp, as_module)
    return Engine(stage=stage, precision=precision, autocast_dtype=autocast_dtype,
                  scaler=torch.amp.GradScaler("cuda") if precision == "fp16" else None,
                  loss_fn=module_loss if as_module else loss_fn, trainable=trainable, work=work,
                  forward_model=forward_model, optimizer=optimizer,
                  scheduler=build_scheduler(optimizer, stage.schedule, total_steps), fsdp=fsdp, graphs=graphs,
                  compiled=compiled, fp8_info=fp8_info, auto_choice=auto_choice, per_step=per_step,
                  steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                  eval_every=stage.eval_every or steps_per_epoch, loaded_attention=loaded_attention)


def _auto_micro_batch(model, split, stage, ctx, dd, autocast_dtype, probe_loss):
    from . import microbatch

    model.to(ctx.device)
    model.train()
    m, accum, tried = microbatch.choose(model, split, stage, probe_loss, ctx.device, autocast_dtype, dd)
    ctx.log.log(stage.name, 0, event="auto_micro_batch", micro_batch=m, grad_accum=accum, tried=str(tried))
    console.print(f"auto micro-batch: {m} x {accum} accumulation (global batch {m * accum * dd.world}; tried "
                  f"{tried})")
    return (stage.model_copy(update={"batch_size": m, "grad_accum": accum}),
            {"micro_batch": m, "grad_accum": accum, "tried": tried})


def _compile(forward_model, core, stage, ctx, fsdp: bool, as_module: bool):
    """torch.compile as the stage asks: (the forward module, what was compiled, whether CUDA graphs record)."""
    task, device = ctx.recipe.task, ctx.device
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
    if not stage.compile:
        return forward_model, None, graphs
    if fsdp:  # per block, so that FSDP2's hooks run between compiled blocks; the loss on its own
        compiled = f"{distributed.compile_blocks(core.model if as_module else core, compile_mode, dynamic)} blocks"
        if as_module and core.compile_loss(compile_mode, dynamic):
            compiled += " + loss"
        return forward_model, compiled, graphs
    # compiled lazily: the first step pays the compile time (`first_step_s` in the summary)
    return torch.compile(forward_model, mode=compile_mode, dynamic=dynamic), "model", graphs


def accelerate(model, stage) -> dict | None:
    """The model-side acceleration switches: the attention kernel, activation checkpointing and fp8 matmuls (what
    fp8 converted, or None)."""
    switch(model, stage)
    if stage.activation_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise RecipeError(stage.key_of("activation_checkpointing"),
                              f"{type(model).__name__} does not support activation checkpointing", "set it to false")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if stage.fp8 == "off":
        return None
    from . import fp8

    why = fp8.why_unsupported(next(model.parameters()).device)
    if why:
        raise RecipeError(stage.key_of("fp8"), why, "set fp8: off")
    info = fp8.enable(model, stage.fp8)
    if not info["fp8_linears"]:
        fp8.disable(model)
        raise RecipeError(stage.key_of("fp8"), "no Linear of this model qualifies (widths must be multiples "
                          "of 16; the output head stays in high precision)", "set fp8: off")
    console.print(f"fp8 ({stage.fp8}): {info['fp8_linears']} Linears")
    return info


def finish(engine: Engine, model, device) -> torch.nn.Module:
    """After the last step: the trained weights into the plain model (gathered from FSDP2's shards), activation
    checkpointing off, fp8 modules and the training attention kernel swapped back. Returns what now holds the
    trained weights (the model, or the model with its extras)."""
    trainable = engine.trainable
    if engine.fsdp:
        full, _ = distributed.full_state(engine.work, everywhere=True)
        model.load_state_dict(unwrapped(full))
        model.to(device)
        trainable = model
    if engine.stage.activation_checkpointing and getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()
    return trainable


def restore_model(engine: Engine, model) -> None:
    """The model goes back to its own modules (and state dict layout) and its loaded attention, for measurement,
    later stages and saving (FA4 takes bf16 only; the measured fp32 model would be refused)."""
    if engine.fp8_info:
        from . import fp8

        fp8.disable(model)
    if engine.stage.attention in ("sdpa_causal", "fa4") and engine.loaded_attention:
        model.set_attn_implementation(engine.loaded_attention)
