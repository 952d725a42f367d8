"""Recipe schema of training: the optimizer, schedule, recovery, profiling, acceleration switches (TrainSettings,
shared by every stage that trains) and the `train` stage itself."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from ..specbase import NAME, StageBase, Strict


class OptimizerSpec(Strict):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(5e-5, gt=0.0, le=10.0)
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    fused: bool | None = None  # AdamW's fused kernel; null: on CUDA only

    @model_validator(mode="after")
    def _betas(self):
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("optimizer.betas must both lie in [0, 1)")
        return self


class ScheduleSpec(Strict):
    name: Literal["constant", "linear", "cosine"] = "linear"
    warmup_steps: int | None = Field(None, ge=0)
    warmup_ratio: float | None = Field(None, ge=0.0, lt=1.0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_warmup(self):
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("set schedule.warmup_steps or schedule.warmup_ratio, not both")
        return self


class EarlyStoppingSpec(Strict):
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class RecoverySpec(Strict):
    """Instability recovery: a non-finite loss or a loss spike (above the rolling median + k·MAD of the last
    `window` steps, and well above the window's highest loss: train/recovery.py) rolls training back to the last
    checkpoint, skips the data window that led to it, lowers the
    learning rate, and retries — at most `max_rollbacks` times; after that a bad step is skipped, never applied."""

    enabled: bool = True
    spike_k: float = Field(8.0, gt=0.0)  # a spike: loss > median + spike_k · MAD (MAD floored at 1% of the median)
    # ... and loss > max + tail · (max - median), max the window's highest loss: batch losses that jitter widely
    # (a low-loss phase) raise the bar with them; 0 turns this bound off
    tail: float = Field(1.0, ge=0.0)
    # ... and loss > median + min_rise · the stage's starting loss (the median of its first min_history losses): a
    # hard batch late in training is no blow-up, a loss back above where the stage began is; 0 turns this bound off
    min_rise: float = Field(1.0, ge=0.0)
    window: int = Field(50, ge=5)  # steps in the rolling window
    min_history: int = Field(20, ge=3)  # steps seen before spikes are looked for
    lr_factor: float = Field(0.5, gt=0.0, le=1.0)  # the learning rate is multiplied by this at each rollback
    max_rollbacks: int = Field(3, ge=0)


class ProfileSpec(Strict):
    """Profile steps [start, start + steps) of a training stage with torch.profiler (CPU and CUDA activity) on rank 0:
    a Chrome trace (`profile/trace_rank0.json`, open in Perfetto / chrome://tracing) and the costliest ops by self
    time (`profile/top_ops_rank0.txt`), under the stage's folder. Profiling slows the profiled steps down."""

    start: int = Field(5, ge=1)  # first profiled step (after warm-up and compilation)
    steps: int = Field(3, ge=1, le=50)
    top: int = Field(40, ge=1)  # rows of the op table


class TrainSettings(Strict):
    """How to train: used by `train` stages and by stages that fine-tune internally (QAT, recovery)."""

    _key: str = PrivateAttr("")  # where these settings sit in the recipe (`stages.<i>` or `stages.<i>.train`)

    def set_key(self, key: str) -> None:
        self._key = key

    def key_of(self, field: str) -> str:
        """The recipe key an error about `field` names: `stages.<i>[.train].<field>` (set when the recipe is
        parsed; settings built in Python, outside a recipe, name the stage instead)."""
        return f"{self._key or 'stages.' + getattr(self, 'name', 'train')}.{field}"

    epochs: float = Field(1.0, gt=0.0, le=1000.0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    eval_every: int | None = Field(None, ge=1)
    metric: str | None = None
    early_stopping: EarlyStoppingSpec | None = None
    keep_best: bool = True
    checkpoint_every: int = Field(50, ge=0)
    # write checkpoints on a background thread (the tensors are copied to host memory first, the GPU waits for that
    # only); auto: on CUDA, where a synchronous write stalls the GPU for seconds
    async_checkpoint: Literal["auto", "on", "off"] = "auto"
    log_every: int = Field(10, ge=1)
    recovery: RecoverySpec = RecoverySpec()  # rollback on NaN / loss spikes (needs checkpoint_every > 0)
    # Acceleration switches (docs/methods/acceleration.md; `trainopt bench` measures each one on and off):
    compile: bool = False  # torch.compile the training forward/backward (inductor, CPU and CUDA)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # torch.compile's shapes: auto (static first, dynamic once a second shape appears), static (one graph per batch
    # shape: fastest kernels when shapes are few, e.g. with data.pad_to_multiple_of), dynamic (one shape-generic graph)
    compile_dynamic: Literal["auto", "static", "dynamic"] = "auto"
    activation_checkpointing: bool = False  # recompute activations in backward: less memory, more compute
    auto_micro_batch: bool = False  # largest micro-batch that fits; grad_accum adjusted to keep the global batch
    # attention kernel (auto: as loaded; sdpa_causal: SDPA with is_causal instead of a mask tensor for unpadded causal
    # batches, train/attention.py; fa4: FlashAttention-4's CuTe kernels on Hopper/Blackwell, train/fa4.py)
    attention: Literal["auto", "sdpa", "sdpa_causal", "eager", "flash_attention_2", "fa4"] = "auto"
    # which kernel PyTorch's scaled_dot_product_attention runs in training (auto: PyTorch's choice; flash: its
    # FlashAttention-2 (CUDA) or flash CPU kernel; cudnn and efficient: CUDA only; math: the unfused reference)
    sdpa_backend: Literal["auto", "flash", "cudnn", "efficient", "math"] = "auto"
    lm_loss: Literal["full", "chunked", "liger"] = "full"  # causal LM head + loss without the full logits tensor
    lm_loss_chunk: int = Field(4096, ge=16)  # positions per chunk for lm_loss: chunked
    # lm_loss: chunked — the head's matmuls on the vocabulary zero-padded to a multiple of this (e.g. 64: GPT-2's
    # 50,257 → 50,304, aligned for matmul kernels); the padded logits are masked, the model is unchanged
    lm_loss_vocab_multiple: int = Field(1, ge=1, le=1024)
    # fp8 matmuls in training through torchao (train/fp8.py): tensorwise | rowwise | rowwise_with_gw_hp scaling;
    # CUDA compute capability 8.9+ for speed (the CPU runs them slowly); the model saves in its own dtype and class
    fp8: Literal["off", "tensorwise", "rowwise", "rowwise_with_gw_hp"] = "off"

    @field_validator("fp8", mode="before")
    @classmethod
    def _fp8_bool(cls, v):  # YAML reads `fp8: off` as false (and `on` as true): accept both spellings
        return {False: "off", True: "tensorwise"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("async_checkpoint", mode="before")
    @classmethod
    def _async_bool(cls, v):  # the same for `async_checkpoint: on / off` (and true / false)
        return {False: "off", True: "on"}.get(v, v) if isinstance(v, bool) else v

    parallel: Literal["ddp", "fsdp"] = "ddp"  # several processes: replicate (DDP) or shard (FSDP2) the model
    ddp_bucket_mb: float = Field(25.0, gt=0.0)  # DDP: gradient all-reduce bucket size (overlap vs per-call cost)
    ddp_comm: Literal["fp32", "bf16"] = "fp32"  # DDP: gradients all-reduced in fp32, or in bf16 (half the bytes)
    # FSDP2: free each block's gathered parameters after its forward (least memory; gathered again for the backward)
    # or keep them until the backward (one all-gather per block per step instead of two; ZeRO-2-like memory)
    fsdp_reshard: bool = True
    profile: ProfileSpec | None = None  # torch.profiler over a few steps: traces + a table of the costliest ops



class TrainStage(StageBase, TrainSettings):
    kind: Literal["train"]
    name: str = Field("train", pattern=NAME)


    def trainings(self):
        return [("", self)]


def as_train_stage(settings: TrainSettings, name: str) -> TrainStage:
    """The training a prune / distill / quantize stage runs inside itself, as a train stage named after it (the one
    place a nested `train:` / `qat:` block becomes a TrainStage)."""
    stage = TrainStage(kind="train", name=name, **settings.model_dump())
    stage.set_key(settings._key)
    return stage
