"""The recipe: a typed schema (pydantic), YAML loading, `--set` overrides and one-line validation errors.

Every key is documented in docs/recipe.md (type, default, meaning); keep the two in step.
Validation happens before any work starts: a bad recipe never creates a run directory.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import RecipeError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
BUILTIN_MODELS = ("builtin:minilm-l6", "builtin:smollm2-135m")
BUILTIN_DATA = ("builtin:fine_foods", "builtin:austen")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------------------------- model
class TokenizerTrainSpec(Strict):
    """Train a byte-level BPE tokenizer on the training split (for models built from a config)."""

    vocab_size: int = Field(4096, ge=260, le=262144)
    min_frequency: int = Field(2, ge=1)


class ModelSpec(Strict):
    path: str | None = None
    config: dict[str, Any] | None = None
    tokenizer: str | None = None
    train_tokenizer: TokenizerTrainSpec | None = None
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self):
        if self.path is None and self.config is None:
            raise ValueError("set model.path (a local HF folder or builtin:…) or model.config (build from a config)")
        if self.path is not None and self.config is not None:
            raise ValueError("model.path and model.config are exclusive: load a checkpoint or build from a config")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("model.config needs a model_type (e.g. gpt2, llama, bert)")
        if self.config is not None and self.tokenizer is None and self.train_tokenizer is None:
            raise ValueError("a model built from model.config needs model.tokenizer (a folder) or model.train_tokenizer")
        if self.path is not None and self.train_tokenizer is not None:
            raise ValueError("model.train_tokenizer only applies to models built from model.config")
        return self


# ------------------------------------------------------------------------------------------------ data
class CleanSpec(Strict):
    strip_html: bool = True
    normalize_whitespace: bool = True
    dedup: bool = True


class DataSpec(Strict):
    source: str = "builtin:fine_foods"
    format: Literal["auto", "jsonl", "csv", "txt", "parquet", "datasets"] = "auto"
    validation_source: str | None = None
    test_source: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    labels: list[str] | None = None
    unseen_labels: Literal["error", "drop"] = "error"
    clean: CleanSpec = CleanSpec()
    validation_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    split_seed: int = 0
    max_train_examples: int | None = Field(None, ge=1)
    max_validation_examples: int | None = Field(None, ge=1)
    max_test_examples: int | None = Field(None, ge=1)
    max_length: int = Field(128, ge=8, le=32768)
    block_size: int = Field(256, ge=8, le=32768)
    bucket: bool = True
    # classification: pad each batch to a multiple of this many tokens (not just to its longest row): with `bucket`,
    # few distinct batch shapes, so a compiled model (compile_dynamic: static) keeps one static graph per shape
    pad_to_multiple_of: int | None = Field(None, ge=1, le=4096)
    encoding_errors: Literal["replace", "strict"] = "replace"


# ---------------------------------------------------------------------------------------------- stages
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
    `window` steps) rolls training back to the last checkpoint, skips the data window that led to it, lowers the
    learning rate, and retries — at most `max_rollbacks` times; after that a bad step is skipped, never applied."""

    enabled: bool = True
    spike_k: float = Field(8.0, gt=0.0)  # a spike: loss > median + spike_k · MAD (MAD floored at 1% of the median)
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

    parallel: Literal["ddp", "fsdp"] = "ddp"  # several processes: replicate (DDP) or shard (FSDP2) the model
    ddp_bucket_mb: float = Field(25.0, gt=0.0)  # DDP: gradient all-reduce bucket size (overlap vs per-call cost)
    ddp_comm: Literal["fp32", "bf16"] = "fp32"  # DDP: gradients all-reduced in fp32, or in bf16 (half the bytes)
    # FSDP2: free each block's gathered parameters after its forward (least memory; gathered again for the backward)
    # or keep them until the backward (one all-gather per block per step instead of two; ZeRO-2-like memory)
    fsdp_reshard: bool = True
    profile: ProfileSpec | None = None  # torch.profiler over a few steps: traces + a table of the costliest ops


class StageBase(Strict):
    name: str = Field("stage", pattern=_NAME)
    from_stage: str | None = None  # start from this earlier stage's model instead of the previous stage's


class TrainStage(StageBase, TrainSettings):
    kind: Literal["train"]
    name: str = Field("train", pattern=_NAME)


class EvalStage(StageBase):
    kind: Literal["eval"]
    name: str = Field("eval", pattern=_NAME)


class SmoothSpec(Strict):
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    calibration_batches: int = Field(8, ge=1)


class QuantizeStage(StageBase):
    kind: Literal["quantize"]
    name: str = Field("quantize", pattern=_NAME)
    method: Literal["dynamic_int8", "weight_only_int8", "weight_only_int4"] = "dynamic_int8"
    group_size: Literal[32, 64, 128, 256] = 128  # weight_only_int4: input channels per int4 scale group
    # weight_only_int4: each group's scale and zero from its min and max, or chosen by HQQ's solver (torchao's), which
    # moves them to cut the rounding error (slower to quantize; the same kernel and bytes)
    int4_qparams: Literal["minmax", "hqq"] = "minmax"
    embeddings: bool = True
    # weight_only_int4: vocabulary embeddings (and a head tied to them) in int8 per row, or in int4 in groups of
    # embedding_group_size along the hidden axis (smaller; costs more quality: see docs/methods/quantize.md)
    embedding_bits: Literal[8, 4] = 8
    embedding_group_size: Literal[16, 32, 64, 128] = 32
    skip: list[str] = []
    smooth: SmoothSpec | None = None
    qat: TrainSettings | None = None

    @model_validator(mode="after")
    def _dynamic_only(self):
        if self.method != "dynamic_int8" and (self.smooth is not None or self.qat is not None):
            raise ValueError("smooth and qat apply to method: dynamic_int8; remove them for weight-only methods")
        if self.method != "weight_only_int4" and self.int4_qparams != "minmax":
            raise ValueError("int4_qparams applies to method: weight_only_int4; remove it for other methods")
        if self.method != "weight_only_int4" and self.embedding_bits != 8:
            raise ValueError("embedding_bits: 4 applies to method: weight_only_int4; remove it for other methods")
        return self


class StudentSpec(Strict):
    """The student: teacher layers to keep (layer dropping), or a smaller config (fresh initialisation)."""

    layers: list[int] | None = None
    num_layers: int | None = Field(None, ge=1)
    config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_way(self):
        if self.config is not None and (self.layers is not None or self.num_layers is not None):
            raise ValueError("student.config (a smaller model) excludes student.layers / student.num_layers "
                             "(layer dropping)")
        if self.layers is not None and self.num_layers is not None and len(self.layers) != self.num_layers:
            raise ValueError("student.layers and student.num_layers disagree; set one of them")
        if self.layers is not None and not self.layers:
            raise ValueError("student.layers must list at least one teacher layer")
        return self


class DistillLossSpec(Strict):
    kd: float = Field(1.0, ge=0.0)
    temperature: float = Field(2.0, gt=0.0, le=100.0)
    ce: float = Field(1.0, ge=0.0)
    hidden: float = Field(0.0, ge=0.0)
    attention: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _some_term(self):
        if not (self.kd or self.ce or self.hidden or self.attention):
            raise ValueError("the distillation loss needs a positive weight (kd, ce, hidden or attention)")
        return self


class DistillStage(StageBase):
    kind: Literal["distill"]
    name: str = Field("distill", pattern=_NAME)
    teacher: str | None = None  # a model folder; default: the stage's input model
    teacher_stage: str | None = None  # or an earlier stage's model (e.g. the fine-tuned one before pruning)
    student: StudentSpec = StudentSpec()
    loss: DistillLossSpec = DistillLossSpec()
    train: TrainSettings = TrainSettings()
    cache_teacher: bool = True


class GradualSpec(Strict):
    """Zhu & Gupta (2017) cubic schedule: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^3 between t0 and t1."""

    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0)
    start: float = Field(0.0, ge=0.0, lt=1.0)  # t0, as a fraction of the training steps
    end: float = Field(0.7, gt=0.0, le=1.0)  # t1: the target sparsity is reached here and then held
    every: int = Field(10, ge=1)  # optimizer steps between mask updates

    @model_validator(mode="after")
    def _order(self):
        if self.end <= self.start:
            raise ValueError("schedule.end must come after schedule.start (fractions of the training steps)")
        return self


class StructuredSpec(Strict):
    """Structured pruning: remove attention heads and FFN neurons by slicing the Linear layers."""

    heads: float = Field(0.0, ge=0.0, lt=1.0)  # fraction of attention heads to remove
    ffn: float = Field(0.0, ge=0.0, lt=1.0)  # fraction of FFN neurons to remove
    importance: Literal["taylor", "magnitude"] = "taylor"
    same_per_layer: bool = True  # same count in every layer (a plain config) vs one global ranking

    @model_validator(mode="after")
    def _something(self):
        if not (self.heads or self.ffn):
            raise ValueError("structured pruning needs structured.heads or structured.ffn above 0")
        return self


class PruneStage(StageBase):
    kind: Literal["prune"]
    name: str = Field("prune", pattern=_NAME)
    method: Literal["magnitude", "gradual", "wanda", "structured"] = "magnitude"
    sparsity: float = Field(0.5, gt=0.0, lt=1.0)  # unstructured target (magnitude, gradual, wanda)
    pattern: Literal["unstructured", "2:4"] = "unstructured"
    scope: Literal["global", "layer"] = "global"  # magnitude/gradual: one threshold, or per layer (wanda: per row)
    embeddings: bool = False  # prune the embedding matrices too
    classifier: bool = False  # prune the output head (classifier / lm_head) too
    skip: list[str] = []  # module-name substrings never pruned
    structured: StructuredSpec | None = None
    schedule: GradualSpec = GradualSpec()
    calibration_batches: int = Field(16, ge=1)  # wanda / taylor importance
    train: TrainSettings | None = None  # recovery fine-tuning (gradual: the training during which it prunes)
    distill: DistillLossSpec | None = None  # recover by distilling from the unpruned model
    teacher_stage: str | None = None  # distill from this earlier stage's model instead (e.g. the fine-tuned one)
    sparse_kernels: bool = True  # 2:4 on CUDA: time cuSPARSELt kernels (fastest mode) against dense bf16 (fastest mode)

    @model_validator(mode="after")
    def _method_keys(self):
        if self.method == "structured" and self.structured is None:
            raise ValueError("method: structured needs a structured: block (heads and/or ffn fractions)")
        if self.method != "structured" and self.structured is not None:
            raise ValueError(f"structured: applies to method: structured, not {self.method}")
        if self.method == "gradual" and self.pattern != "unstructured":
            raise ValueError("gradual pruning is unstructured; for 2:4 use method: magnitude with pattern: '2:4' "
                             "and a train: block")
        if self.distill is not None and self.train is None:
            raise ValueError("distill: recovers during fine-tuning; add a train: block")
        if self.teacher_stage is not None and self.distill is None:
            raise ValueError("teacher_stage teaches through the distillation loss; add a distill: block")
        return self


class EdaSpec(Strict):
    """EDA operation rates (Wei & Zou 2019's alpha): the share of a text's words each one touches; 0 turns it off."""

    synonym: float = Field(0.1, ge=0.0, le=1.0)
    insert: float = Field(0.1, ge=0.0, le=1.0)
    swap: float = Field(0.1, ge=0.0, le=1.0)
    delete: float = Field(0.1, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _some(self):
        if not (self.synonym or self.insert or self.swap or self.delete):
            raise ValueError("eda needs at least one operation rate above 0 (synonym, insert, swap, delete)")
        return self


class BackTranslateSpec(Strict):
    """English → pivot → English through an offline engine: Apertium (Debian apertium-eng-spa), or a pair of
    local Hugging Face translation models (MarianMT or any seq2seq folder)."""

    engine: Literal["apertium", "marian"] = "apertium"
    pivot: Literal["spa"] = "spa"  # apertium's pivot language
    forward_model: str | None = None  # marian: English → pivot folder
    back_model: str | None = None  # marian: pivot → English folder
    batch_size: int = Field(256, ge=1)  # texts per engine call
    max_new_tokens: int = Field(256, ge=1)  # marian: generation length cap
    num_beams: int = Field(1, ge=1, le=16)  # marian: 1 = greedy
    device: Literal["auto", "cpu", "cuda"] = "auto"  # marian
    timeout_s: float = Field(600.0, gt=0.0)  # apertium: per call; a clear error when the engine takes longer

    @model_validator(mode="after")
    def _marian_models(self):
        if self.engine == "marian" and not (self.forward_model and self.back_model):
            raise ValueError("backtranslate.engine: marian needs backtranslate.forward_model and back_model "
                             "(local translation model folders)")
        return self


class ContextualSpec(Strict):
    """Replace words with a model's suggestions: a masked LM's predictions, or input-embedding neighbours."""

    source: Literal["embedding", "mlm"] = "embedding"
    model: str | None = None  # a local HF folder (mlm: with an MLM head); embedding: default the run's model
    rate: float = Field(0.15, gt=0.0, le=1.0)  # share of a text's words replaced
    per_example: int = Field(1, ge=1, le=16)  # contextual examples per training example
    top_k: int = Field(5, ge=1, le=100)  # a replacement is drawn from the top k

    @model_validator(mode="after")
    def _mlm_needs_model(self):
        if self.source == "mlm" and not self.model:
            raise ValueError("contextual.source: mlm needs contextual.model (a local folder with an MLM head)")
        return self


class AugmentStage(StageBase):
    """Enlarge the training split for the stages after this one (classification). Trains nothing."""

    kind: Literal["augment"]
    name: str = Field("augment", pattern=_NAME)
    per_example: int = Field(4, ge=0, le=64)  # new EDA examples per training example (before filtering)
    eda: EdaSpec = EdaSpec()
    backtranslate: BackTranslateSpec | None = None  # adds one back-translated example per training example
    contextual: ContextualSpec | None = None  # adds contextual.per_example model-suggested variants
    synonyms: Literal["wordnet"] = "wordnet"
    max_senses: int = Field(3, ge=1)  # synonyms come from the word's most frequent senses
    max_words: int | None = Field(256, ge=1)  # longer augmented texts are cut to this many words
    seed: int | None = None  # default: run.seed

    @model_validator(mode="after")
    def _no_model(self):
        if self.from_stage is not None:
            raise ValueError("augment changes the training data, not a model; remove from_stage")
        if self.per_example == 0 and self.backtranslate is None and self.contextual is None:
            raise ValueError("augment needs per_example > 0 (EDA), a backtranslate: or a contextual: block")
        return self


Stage = Annotated[Union[TrainStage, EvalStage, QuantizeStage, DistillStage, PruneStage, AugmentStage],
                  Field(discriminator="kind")]


# ---------------------------------------------------------------------------------------------- search
QUALITY_METRICS = ("accuracy", "f1_macro", "loss", "perplexity")
OTHER_METRICS = ("params", "nonzero_params", "disk_bytes", "throughput_items_per_s", "wall_s", "tokens_per_s",
                 "mfu", "peak_mem_bytes")
MAXIMIZED = ("accuracy", "f1_macro", "throughput_items_per_s", "tokens_per_s", "mfu")


class ParamSpec(Strict):
    """One searched recipe key: a float or int range (optionally log-scaled or stepped), or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0.0)
    choices: list[bool | int | float | str | None] | None = None

    @model_validator(mode="after")
    def _shape(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty choices: list")
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("a categorical parameter takes choices:, not low/high/step/log")
            return self
        if self.choices is not None:
            raise ValueError(f"choices: applies to type: categorical, not {self.type}")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs low: and high:")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scaled range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("log: true and step: are exclusive (Optuna samples one or the other)")
        if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()
                                       and (self.step is None or float(self.step).is_integer())):
            raise ValueError("an int parameter needs whole-number low, high and step")
        return self

    def grid(self) -> list | None:
        """The values a grid search visits, or None for a continuous range."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))
        if self.step is None:
            return None
        n = int(round((self.high - self.low) / self.step))
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]


class ObjectiveSpec(Strict):
    """What a trial is scored on: a metric of one stage's report entry."""

    metric: str = "accuracy"  # accuracy, f1_macro, loss, perplexity, latency_ms_b<N>_p50, disk_bytes, params, …
    direction: Literal["maximize", "minimize"] | None = None  # default: maximize accuracy-like, minimize others
    stage: str | None = None  # default: the last stage
    split: Literal["validation", "test"] = "validation"  # quality metrics: tune on validation, never on test

    @model_validator(mode="after")
    def _metric(self):
        m = self.metric
        if not (m in QUALITY_METRICS or m in OTHER_METRICS or re.fullmatch(r"latency_ms_b\d+_p50", m)):
            close = difflib.get_close_matches(m, [*QUALITY_METRICS, *OTHER_METRICS, "latency_ms_b32_p50"], n=1)
            raise ValueError(f"unknown objective metric '{m}'" + (f"; did you mean '{close[0]}'?" if close else
                             "; use a quality metric (accuracy, f1_macro, loss, perplexity), latency_ms_b<N>_p50, "
                             "disk_bytes, params, nonzero_params or throughput_items_per_s"))
        if self.direction is None:
            self.direction = "maximize" if m in MAXIMIZED else "minimize"
        return self


class PrunerSpec(Strict):
    """Stop unpromising trials early, from the loop's periodic validation (the k-th evaluation of every trial
    is compared with the k-th of the others)."""

    name: Literal["none", "median", "percentile", "halving", "hyperband"] = "median"
    startup_trials: int = Field(5, ge=0)  # median / percentile: trials that finish before any is pruned
    warmup_evals: int = Field(1, ge=0)  # median / percentile: a trial's first evaluations are never pruned
    percentile: float = Field(25.0, gt=0.0, lt=100.0)  # percentile: prune below this percentile of earlier trials
    reduction_factor: int = Field(3, ge=2)  # halving / hyperband
    min_resource: int = Field(1, ge=1)  # halving / hyperband: evaluations before the first rung
    # Optuna's PatientPruner around the chosen pruner: the pruner may act only once the best of the trial's last
    # patience + 1 evaluations is below the best before them by more than min_delta (the trial got worse); with
    # name: none, that alone stops the trial (early stopping per trial)
    patience: int | None = Field(None, ge=1)
    min_delta: float = Field(0.0, ge=0.0)

    @property
    def active(self) -> bool:
        """Whether trials can be pruned at all (a patience alone stops trials that stopped improving)."""
        return self.name != "none" or self.patience is not None

    def label(self) -> str:
        return self.name + (f"+patience{self.patience}" if self.patience is not None else "")


class SearchSpec(Strict):
    """`trainopt tune`: an Optuna study over recipe keys (see docs/methods/tune.md)."""

    space: dict[str, ParamSpec] = Field(min_length=1)  # recipe key path (as for --set) → range
    objectives: list[ObjectiveSpec] = Field([ObjectiveSpec()], min_length=1, max_length=4)
    trials: int | None = Field(20, ge=1)  # finished (complete or pruned) trials; null: until timeout_s
    timeout_s: float | None = Field(None, gt=0.0)  # no new trial starts after this (a running one finishes)
    max_trial_steps: int | None = Field(None, ge=1)  # compute budget: no new trial once trials ran this many steps
    sampler: Literal["tpe", "random", "grid", "gp", "nsga2"] = "tpe"
    startup_trials: int = Field(8, ge=0)  # tpe / gp: random trials before the model takes over
    pruner: PrunerSpec = PrunerSpec()
    seed: int | None = None  # default: run.seed (worker k uses seed + k)
    storage: str | None = None  # default: sqlite in the run directory; postgresql://… for many workers/machines
    study_name: str | None = None  # default: the recipe name
    heartbeat_s: int = Field(30, ge=1)  # a trial silent for 2 heartbeats (its worker died) is marked failed
    keep_models: Literal["best", "all", "none"] = "best"  # trial model folders kept: best/Pareto trials only
    enqueue: list[dict[str, Any]] = []  # trials to run first, e.g. [{stages.finetune.optimizer.lr: 1.0e-4}]

    @model_validator(mode="after")
    def _consistent(self):
        if self.trials is None and self.timeout_s is None and self.max_trial_steps is None:
            raise ValueError("set search.trials, search.timeout_s or search.max_trial_steps (any combination)")
        if len(self.objectives) > 1 and self.pruner.active:
            raise ValueError("Optuna prunes single-objective studies only; with several objectives set "
                             "search.pruner.name: none (and no patience)")
        if self.pruner.active and not (self.objectives[0].metric in QUALITY_METRICS
                                               and self.objectives[0].split == "validation"):
            raise ValueError("trial pruning follows the validation metric during training; the objective must be "
                             "a quality metric on split: validation (or set search.pruner.name: none)")
        for i, params in enumerate(self.enqueue):
            unknown = [k for k in params if k not in self.space]
            if unknown:
                raise ValueError(f"search.enqueue.{i}: '{unknown[0]}' is not a key of search.space")
        if self.sampler == "grid":
            continuous = [k for k, p in self.space.items() if p.grid() is None]
            if continuous:
                raise ValueError(f"grid search needs discrete values; give search.space.{continuous[0]} a step: "
                                 "or choices:")
        return self


# ------------------------------------------------------------------------------------------ run/measure
class MeasureSpec(Strict):
    latency: bool = True
    validation: bool = False  # also evaluate every stage on the validation split (tune turns it on)
    batch_sizes: list[int] = [1, 32]
    warmup: int = Field(3, ge=0)
    repeats: int = Field(20, ge=1)
    max_seconds: float = Field(15.0, gt=0.0)
    seq_len: int | None = Field(None, ge=1)
    generate_tokens: int = Field(32, ge=0)

    @model_validator(mode="after")
    def _sizes(self):
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError("measure.batch_sizes must be a non-empty list of positive integers")
        return self


class RunSpec(Strict):
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)
    peak_flops: float | None = Field(None, gt=0.0)
    tensorboard: bool = True
    progress: bool = True
    # CUDA: copy micro-batches from pinned (page-locked) host memory, so that the copy is asynchronous and the host
    # keeps queueing kernels; false: plain pageable copies (the host waits for each). No effect on CPU.
    pin_memory: bool = True


class Recipe(Strict):
    name: str = Field("run", pattern=_NAME)
    task: Literal["classification", "causal_lm"] = "classification"
    model: ModelSpec
    data: DataSpec = DataSpec()
    stages: list[Stage] = Field(min_length=1)
    run: RunSpec = RunSpec()
    measure: MeasureSpec = MeasureSpec()
    search: SearchSpec | None = None  # used by `trainopt tune`; `trainopt run` runs the recipe as written

    @model_validator(mode="after")
    def _cross(self):
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique; '{dup[0]}' appears twice (give each stage a name:)")
        for i, stage in enumerate(self.stages):
            for key in ("from_stage", "teacher_stage"):
                ref = getattr(stage, key, None)
                if ref is not None and ref not in names[:i]:
                    raise RecipeError(f"stages.{i}.{key}", f"'{ref}' is not an earlier stage",
                                      f"use one of {names[:i]}" if i else "the first stage starts from model:")
            if getattr(stage, "teacher", None) and getattr(stage, "teacher_stage", None):
                raise RecipeError(f"stages.{i}.teacher_stage", "teacher and teacher_stage are exclusive",
                                  "name a folder (teacher) or an earlier stage (teacher_stage), not both")
        if self.search is not None:
            for j, obj in enumerate(self.search.objectives):
                if obj.stage is not None and obj.stage not in names:
                    close = difflib.get_close_matches(obj.stage, names, n=1)
                    raise RecipeError(f"search.objectives.{j}.stage", f"no stage named '{obj.stage}'",
                                      f"did you mean '{close[0]}'?" if close else f"stages: {names}")
                lat = re.fullmatch(r"latency_ms_b(\d+)_p50", obj.metric)
                if lat and int(lat.group(1)) not in self.measure.batch_sizes:
                    raise RecipeError(f"search.objectives.{j}.metric", f"batch size {lat.group(1)} is not measured",
                                      f"use one of measure.batch_sizes {self.measure.batch_sizes}")
        return self

    def stage(self, name: str):
        return next(s for s in self.stages if s.name == name)


# ------------------------------------------------------------------------------------ loading & errors
def builtin_recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_recipe_path(spec: str | None) -> Path:
    """A path to a YAML file, or the name of a built-in recipe (default: quickstart)."""
    if spec is None:
        spec = "quickstart"
    p = Path(spec)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise RecipeError("", f"recipe file {spec} does not exist", "pass a YAML file or a built-in name: "
                              + ", ".join(builtin_recipe_names()))
        return p
    builtin = RECIPES_DIR / f"{spec}.yaml"
    if builtin.is_file():
        return builtin
    close = difflib.get_close_matches(spec, builtin_recipe_names(), n=1)
    hint = f"did you mean '{close[0]}'?" if close else "built-in recipes: " + ", ".join(builtin_recipe_names())
    raise RecipeError("", f"no recipe file or built-in recipe named '{spec}'", hint)


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError("", f"{path} is not UTF-8 text (byte {e.start})", "save the recipe as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError("", f"malformed YAML in {path}{where}: {problem}", "fix the YAML syntax") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError("", f"{path} must hold a mapping of keys (model:, data:, stages:, …), "
                          f"not a {type(raw).__name__}", "see docs/recipe.md")
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `key.path=value` overrides (value parsed as YAML). Stages are addressed by index or name."""
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(item, "an override must look like key.path=value", "e.g. --set stages.0.epochs=2")
        key, _, value_text = item.partition("=")
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else None
        except yaml.YAMLError:
            value = value_text
        if not [p for p in key.strip().split(".") if p]:
            raise RecipeError(item, "empty key", "e.g. --set data.max_length=64")
        set_path(raw, key, value)
    return raw


def set_path(raw: dict, key: str, value: Any) -> dict:
    """Set one `key.path` of a raw recipe dict (stages addressed by index or name), creating mappings."""
    parts = [p for p in key.strip().split(".") if p]
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            idx = _list_index(node, part, where)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise RecipeError(where, f"cannot set a key inside a {type(node).__name__}", "check the key path")
    return raw


def _list_index(node: list, part: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if not -len(node) <= idx < len(node):
            raise RecipeError(where, f"index {idx} is out of range (the list has {len(node)} items)",
                              "use an existing index or a stage name")
        return idx
    names = [s.get("name", s.get("kind")) if isinstance(s, dict) else None for s in node]
    if part in names:
        return names.index(part)
    close = difflib.get_close_matches(part, [n for n in names if n], n=1)
    raise RecipeError(where, f"no list item named '{part}'",
                      f"did you mean '{close[0]}'?" if close else f"names here: {names}")


def parse_recipe(raw: dict) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise _one_line(e) from None


def load_recipe(spec: str | Path | dict | Recipe | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe: a YAML path, a built-in name, a dict or a Recipe."""
    if isinstance(spec, Recipe):
        raw = spec.model_dump(mode="json", exclude_unset=False)
    elif isinstance(spec, dict):
        raw = yaml.safe_load(yaml.safe_dump(spec))  # deep copy, and plain YAML types only
    else:
        raw = read_yaml(resolve_recipe_path(str(spec) if spec is not None else None))
    return parse_recipe(apply_overrides(raw, overrides or []))


def _one_line(e: ValidationError) -> RecipeError:
    err = e.errors(include_url=False)[0]
    loc = list(err["loc"])
    typ, msg = err["type"], err["msg"]
    # Discriminated unions put the tag ("train") into the location; drop it from what the user sees.
    clean_loc = [p for i, p in enumerate(loc) if not (i > 0 and loc[i - 1] != "kind" and _is_tag(loc, i))]
    key = _dotted(clean_loc)
    value = err.get("input")
    if typ == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.5)
        fix = f"did you mean '{close[0]}'?" if close else ("allowed keys here: " + ", ".join(allowed) if allowed
                                                           else "remove it")
        return RecipeError(key, "unknown key", fix)
    if typ == "missing":
        return RecipeError(key, "required key is missing", "add it (see docs/recipe.md)")
    if typ in ("union_tag_invalid", "union_tag_not_found"):
        kinds = ", ".join(_stage_kinds())
        got = f" '{value.get('kind')}'" if isinstance(value, dict) and "kind" in value else ""
        return RecipeError(key + ".kind", f"unknown or missing stage kind{got}", f"use one of: {kinds}")
    if typ == "literal_error":
        return RecipeError(key, f"{value!r} is not allowed", msg.replace("Input should be", "use"))
    if typ.endswith("_type") or typ.endswith("_parsing") or typ in ("model_type", "dict_type", "list_type"):
        return RecipeError(key, f"wrong type: got {type(value).__name__} {_short(value)}",
                           msg.replace("Input should be", "it should be"))
    if typ in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "too_long"):
        return RecipeError(key, f"{_short(value)} is out of range", msg.replace("Input should", "it should")
                           .replace("Value should", "it should").replace("List should", "it should"))
    if typ == "string_pattern_mismatch":
        return RecipeError(key, f"{_short(value)} is not a valid name",
                           "use letters, digits, '_', '-' and '.' (starting with a letter or digit)")
    if typ == "value_error":
        text = msg.removeprefix("Value error, ")
        return RecipeError(key or "recipe", text)
    return RecipeError(key, msg)


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _is_tag(loc: list, i: int) -> bool:
    return isinstance(loc[i], str) and isinstance(loc[i - 1], int) and loc[i] in _stage_kinds() \
        and i >= 2 and loc[i - 2] == "stages"


def _stage_kinds() -> list[str]:
    return [typing.get_args(c.model_fields["kind"].annotation)[0] for c in typing.get_args(
        typing.get_args(Stage)[0])]


def _dotted(loc: list) -> str:
    return ".".join(str(p) for p in loc)


def _fields_at(loc: list) -> list[str]:
    """The keys allowed at a location of the recipe (for did-you-mean)."""
    cls: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            cls = _unwrap(cls, want_item=True)
            continue
        if isinstance(cls, list):  # a stage union, resolved by its tag
            cls = next((c for c in cls if typing.get_args(c.model_fields["kind"].annotation)[0] == part), None)
            if cls is not None:
                continue
            return []
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return []
        cls = _unwrap(cls.model_fields[part].annotation)
    if isinstance(cls, list):
        return []
    return list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def _unwrap(tp: Any, want_item: bool = False) -> Any:
    """Strip Optional/Annotated/list[...] down to a model class, or a list of classes for a union."""
    for _ in range(6):
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is Annotated:
            tp = args[0]
        elif origin in (list, tuple) and want_item:
            tp, want_item = args[0], False
        elif origin in (Union, types.UnionType):
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if len(models) == 1:
                tp = models[0]
            else:
                return models
        else:
            break
    return tp


def dump_recipe(recipe: Recipe) -> str:
    raw = recipe.model_dump(mode="json")
    if raw.get("search") is None:
        raw.pop("search", None)
    return yaml.safe_dump(raw, sort_keys=False, width=110)


def is_builtin(ref: str | None) -> bool:
    return bool(ref) and str(ref).startswith("builtin:")


def check_paths(recipe: Recipe) -> None:
    """Missing files are recipe errors too: name the key and the fix before any work starts."""
    if re.match(r"^(https?|s3|gs|hf)://", str(recipe.model.path or "")):
        raise RecipeError("model.path", "remote models are not downloaded", "give a local HF checkpoint folder")
    checks = [("model.path", recipe.model.path, BUILTIN_MODELS), ("model.tokenizer", recipe.model.tokenizer,
                                                                   BUILTIN_MODELS),
              ("data.source", recipe.data.source, BUILTIN_DATA),
              *[(f"stages.{i}.teacher", s.teacher, BUILTIN_MODELS) for i, s in enumerate(recipe.stages)
                if getattr(s, "teacher", None)],
              *[(f"stages.{i}.contextual.model", s.contextual.model, BUILTIN_MODELS)
                for i, s in enumerate(recipe.stages) if getattr(s, "contextual", None) and s.contextual.model],
              *[(f"stages.{i}.backtranslate.{k}", getattr(s.backtranslate, k), ())
                for i, s in enumerate(recipe.stages) for k in ("forward_model", "back_model")
                if getattr(s, "backtranslate", None) and getattr(s.backtranslate, k)],
              ("data.validation_source", recipe.data.validation_source, ()),
              ("data.test_source", recipe.data.test_source, ())]
    for key, ref, builtins in checks:
        if ref is None:
            continue
        if is_builtin(ref):
            if ref not in builtins:
                close = difflib.get_close_matches(ref, builtins, n=1)
                raise RecipeError(key, f"unknown built-in '{ref}'",
                                  f"did you mean '{close[0]}'?" if close else f"built-ins: {', '.join(builtins)}")
            continue
        if not Path(ref).expanduser().exists():
            raise RecipeError(key, f"path {ref} does not exist", "give an existing local path (or a builtin:… name)")
