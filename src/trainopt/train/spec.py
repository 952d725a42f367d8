"""Recipe schema of training: the optimizer, schedule, recovery, profiling, acceleration switches (TrainSettings,
shared by every stage that trains) and the `train` stage itself."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from ..specbase import NAME, Doc, StageBase, Strict


class OptimizerSpec(Strict):
    name: Literal["adamw", "sgd"] = "adamw"
    """PyTorch's AdamW (decoupled weight decay) or SGD with momentum"""
    lr: float = Field(5e-5, gt=0.0, le=10.0)
    """peak learning rate"""
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    """decoupled (AdamW) / L2 (SGD) decay, never on biases and normalisation weights"""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW: the decay rates of the first and second moment estimates (each in [0, 1))"""
    eps: float = Field(1e-8, gt=0.0)
    """AdamW: added to the denominator"""
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    """SGD: momentum"""
    nesterov: bool = False
    """SGD: Nesterov momentum"""
    fused: bool | None = None
    """AdamW's fused kernel (null: on CUDA only)"""

    @model_validator(mode="after")
    def _betas(self):
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("optimizer.betas must both lie in [0, 1)")
        return self


class ScheduleSpec(Strict):
    name: Literal["constant", "linear", "cosine"] = "linear"
    """decay after warmup"""
    warmup_steps: int | None = Field(None, ge=0)
    """linear warmup length (set one of them)"""
    warmup_ratio: float | None = Field(None, ge=0.0, lt=1.0)
    """linear warmup length (set one of them)"""
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    """floor of the decay, as a fraction of the peak lr"""

    @model_validator(mode="after")
    def _one_warmup(self):
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("set schedule.warmup_steps or schedule.warmup_ratio, not both")
        return self


class EarlyStoppingSpec(Strict):
    patience: int = Field(3, ge=1)
    """stop after this many evaluations without improvement"""
    min_delta: float = Field(0.0, ge=0.0)
    """smallest change that counts as an improvement"""


class RecoverySpec(Strict):
    """Instability recovery: a non-finite loss or a loss spike (above the rolling median + k·MAD of the last
    `window` steps, and well above the window's highest loss: train/recovery.py) rolls training back to the last
    checkpoint, skips the data window that led to it, lowers the
    learning rate, and retries — at most `max_rollbacks` times; after that a bad step is skipped, never applied."""

    enabled: bool = True
    """instability recovery: a non-finite loss or a loss spike rolls back to the last checkpoint, skips the data window
    since it, multiplies the learning rate by `lr_factor` (needs `checkpoint_every` > 0; without a checkpoint the bad
    step is skipped)"""
    spike_k: float = Field(8.0, gt=0.0)
    """a spike is a loss above median + k·MAD of the last `window` steps (MAD floored at 1% of the median) ..."""
    tail: float = Field(1.0, ge=0.0)
    """... and above the window's highest loss + tail · (that maximum − median): the wide jitter of a low-loss phase
    raises the bar with it (0: off)"""
    min_rise: float = Field(1.0, ge=0.0)
    """... and above median + min_rise · the stage's starting loss (the median of its first `min_history` losses): late
    in training a batch with hard examples is no blow-up, a loss back above where the stage began is (0: off)"""
    window: int = Field(50, ge=5)
    """steps in the rolling window"""
    min_history: int = Field(20, ge=3)
    """steps seen before spikes are looked for"""
    lr_factor: float = Field(0.5, gt=0.0, le=1.0)
    """learning-rate factor per rollback"""
    max_rollbacks: int = Field(3, ge=0)
    """rollbacks per stage; after that a bad step is skipped, never applied"""


class ProfileSpec(Strict):
    """Profile steps [start, start + steps) of a training stage with torch.profiler (CPU and CUDA activity) on rank 0:
    a Chrome trace (`profile/trace_rank0.json`, open in Perfetto / chrome://tracing) and the costliest ops by self
    time (`profile/top_ops_rank0.txt`), under the stage's folder. Profiling slows the profiled steps down."""

    start: int = Field(5, ge=1)
    """the first profiled step (after warm-up and compilation)"""
    steps: int = Field(3, ge=1, le=50)
    """steps profiled"""
    top: int = Field(40, ge=1)
    """rows of the op table"""


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
    """passes over the training split (ignored when `max_steps` is set)"""
    max_steps: int | None = Field(None, ge=1)
    """optimizer steps to take"""
    batch_size: int = Field(32, ge=1)
    """micro-batch size"""
    grad_accum: int = Field(1, ge=1)
    """micro-batches per optimizer step; the loss is normalised over the whole accumulated batch (items, or predicted
    tokens for LM)"""
    eval_batch_size: int = Field(64, ge=1)
    """batch size for validation"""
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    """gradient clipping (null: none)"""
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    """classification only"""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    """autocast precision; `auto` picks bf16 where the device runs it natively (CUDA with bf16; CPUs with
    AVX512-BF16/AMX), fp32 elsewhere; fp16 needs CUDA (GradScaler)"""
    eval_every: Annotated[int | None, Doc(default="null (once per epoch)")] = Field(None, ge=1)
    """validation every N optimizer steps, and at the end"""
    metric: str | None = None
    """validation metric for best weights and early stopping: `accuracy`, `f1_macro`, `loss` (classification); `loss`,
    `perplexity` (LM). Null: `f1_macro` when the largest training class is ≥ 1.5x the smallest, else `accuracy`
    (classification); `loss` (LM)"""
    early_stopping: EarlyStoppingSpec | None = None
    """stop when the validation `metric` stops improving (null: train to the end)"""
    keep_best: bool = True
    """end the stage with the best validation weights"""
    checkpoint_every: int = Field(50, ge=0)
    """atomic checkpoint every N steps (0: never); `--resume` continues from the newest complete one"""
    async_checkpoint: Literal["auto", "on", "off"] = "auto"
    """write checkpoints on a background thread: the tensors are copied to host memory, then written, hashed and renamed
    while training goes on (auto: on CUDA)"""
    log_every: int = Field(10, ge=1)
    """steps between metric lines / progress updates"""
    recovery: RecoverySpec = RecoverySpec()
    compile: bool = False
    """`torch.compile` the training forward/backward (the first step pays the compile time)"""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    """torch.compile mode; `reduce-overhead` replays CUDA graphs (one per batch shape: with classification, pad to one
    shape — `data.pad_to_multiple_of: <max_length>`, `data.bucket: false`, `compile_dynamic: static`)"""
    compile_dynamic: Literal["auto", "static", "dynamic"] = "auto"
    """torch.compile's shapes: auto (static, then dynamic once a second shape appears), static (one graph per batch
    shape; pair with `data.pad_to_multiple_of`), dynamic (one shape-generic graph)"""
    activation_checkpointing: bool = False
    """recompute activations in backward: less memory, more compute"""
    auto_micro_batch: bool = False
    """the largest micro-batch that fits in memory (probed on the longest examples, halving on out-of-memory, the
    smallest choice over all ranks); `grad_accum` adjusted so the global batch `batch_size × grad_accum × ranks` stays
    as set; the choice is logged and in the report"""
    attention: Literal["auto", "sdpa", "sdpa_causal", "eager", "flash_attention_2", "fa4"] = "auto"
    """attention kernel (`auto`: as the model loads; `sdpa_causal`: SDPA with `is_causal` instead of a mask tensor,
    causal_lm; `fa4`: FlashAttention-4, Hopper/Blackwell + `flash-attn-4`, bf16, causal_lm, no attention dropout) —
    docs/methods/attention.md"""
    sdpa_backend: Literal["auto", "flash", "cudnn", "efficient", "math"] = "auto"
    """the kernel PyTorch's `scaled_dot_product_attention` runs in training (`auto`: PyTorch's choice;
    `cudnn`/`efficient`: CUDA only; `flash`/`cudnn` on CUDA need bf16/fp16); needs SDPA attention (`sdpa` or
    `sdpa_causal`)"""
    lm_loss: Literal["full", "chunked", "liger"] = "full"
    """causal LMs in train stages: the head + cross-entropy without the full logits tensor (`chunked`: PyTorch, any
    device; `liger`: Liger-Kernel's Triton kernel, CUDA)"""
    lm_loss_chunk: int = Field(4096, ge=16)
    """positions per chunk for `lm_loss: chunked`"""
    lm_loss_vocab_multiple: int = Field(1, ge=1, le=1024)
    """`lm_loss: chunked`: the head's matmuls on the vocabulary zero-padded to a multiple of this (64: GPT-2's 50,257 →
    50,304, aligned shapes), the padded logits masked; the model is unchanged (`trainopt bench` variant
    `chunked_ce_vocab64`)"""
    fp8: Literal["off", "tensorwise", "rowwise", "rowwise_with_gw_hp"] = "off"
    """fp8 training matmuls through torchao (CUDA compute capability 8.9+ for speed; the CPU runs them slowly); the
    output head and Linears with widths not a multiple of 16 stay in high precision; the saved model is unchanged in
    class and layout ([acceleration](methods/acceleration.md))"""

    @field_validator("fp8", mode="before")
    @classmethod
    def _fp8_bool(cls, v):  # YAML reads `fp8: off` as false (and `on` as true): accept both spellings
        return {False: "off", True: "tensorwise"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("async_checkpoint", mode="before")
    @classmethod
    def _async_bool(cls, v):  # the same for `async_checkpoint: on / off` (and true / false)
        return {False: "off", True: "on"}.get(v, v) if isinstance(v, bool) else v

    parallel: Literal["ddp", "fsdp"] = "ddp"
    """under `--nproc N` / torchrun, train stages: replicate the model (DDP) or shard it (FSDP2)"""
    ddp_bucket_mb: float = Field(25.0, gt=0.0)
    """DDP: size of the gradient buckets all-reduced while the backward runs"""
    ddp_comm: Literal["fp32", "bf16"] = "fp32"
    """DDP: all-reduce the gradients in bf16 (half the bytes, bf16 rounding)"""
    fsdp_reshard: bool = True
    """FSDP2: free each block's gathered parameters after its forward (least memory), or keep them until its backward
    (one all-gather per block per step)"""
    profile: ProfileSpec | None = None
    """torch.profiler over steps [start, start+steps) on rank 0: `profile/trace_rank0.json` (Chrome trace) and
    `profile/top_ops_rank0.txt` (costliest ops) in the stage folder ([training loop](methods/training-loop.md))"""



class TrainStage(StageBase, TrainSettings):
    """Fine-tune a checkpoint or pretrain a fresh model.

    A step whose loss or gradient is not finite, or whose loss spikes, is never applied: see `recovery.*` below and
    [methods/training-loop.md](methods/training-loop.md). The acceleration switches are measured one by one by
    `trainopt bench` ([methods/acceleration.md](methods/acceleration.md))."""

    kind: Literal["train"]
    name: str = Field("train", pattern=NAME)
    """stage name"""


    def trainings(self):
        return [("", self)]


def as_train_stage(settings: TrainSettings, name: str) -> TrainStage:
    """The training a prune / distill / quantize stage runs inside itself, as a train stage named after it (the one
    place a nested `train:` / `qat:` block becomes a TrainStage)."""
    stage = TrainStage(kind="train", name=name, **settings.model_dump())
    stage.set_key(settings._key)
    return stage
