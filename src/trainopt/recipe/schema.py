"""The Recipe: model, data, the chain of stages (their schemas come from trainopt/techniques.py), run, measure and
search settings."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from ..errors import RecipeError
from ..results import batch_of_latency_key
from ..specbase import NAME, BudgetSpec, Doc, Strict, stage_key
from ..techniques import TECHNIQUES
from ..tune.spec import SearchSpec


# ----------------------------------------------------------------------------------------------- model
class TokenizerTrainSpec(Strict):
    """Train a byte-level BPE tokenizer on the training split (for models built from a config)."""

    vocab_size: int = Field(4096, ge=260, le=262144)
    """tokens in the trained vocabulary (the 256 bytes and the special tokens included)"""
    min_frequency: int = Field(2, ge=1)
    """minimum pair frequency for a BPE merge"""


class ModelSpec(Strict):
    path: str | None = None
    """a local Hugging Face checkpoint folder, or `builtin:minilm-l6` (all-MiniLM-L6-v2) / `builtin:smollm2-135m` (needs
    `trainopt data fetch`). Exclusive with `config`"""
    config: dict[str, Any] | None = None
    """build a fresh model for pretraining: `model_type` (e.g. `gpt2`, `llama`, `bert`) plus that config's keys
    (`n_layer`, `n_embd`, …). `vocab_size` and special token ids default to the tokenizer's"""
    tokenizer: Annotated[str | None, Doc(default="`path`")] = None
    """a tokenizer folder (or `builtin:…`); needed with `config` unless `train_tokenizer` is set"""
    train_tokenizer: TokenizerTrainSpec | None = None
    """train a byte-level BPE tokenizer on the training split (`config` models only; null: use `tokenizer`)"""
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    """set every dropout field the config has (hidden, attention, classifier); null keeps the checkpoint's"""
    trust_remote_code: bool = False
    """allow code shipped in the checkpoint folder to run; off unless you ask"""

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
    """replace HTML tags (`<br />`) by spaces and unescape entities"""
    normalize_whitespace: bool = True
    """collapse whitespace (LM: keep paragraph breaks, unwrap lines)"""
    dedup: bool = True
    """drop exact repeats of a (text, label) pair in the training data; a text with several labels keeps one row per
    label (counted as `conflicting_label_texts`)"""
    overlap: Literal["drop_test", "drop_train", "keep"] = "drop_test"
    """validation/test rows whose text is also in the training split: dropped from the held-out split (every training
    row kept), or the training copies dropped (held-out splits as given: for a fixed benchmark test set), or only
    counted (`overlap_with_train_*`)"""


class SFTSpec(Strict):
    """Supervised fine-tuning data (data/sft.py): conversations, the loss on the responses only."""

    prompt_column: str = "prompt"
    """the column of the user turn (one conversation turn per row)"""
    response_column: str = "response"
    """the column of its answer"""
    messages_column: str | None = None
    """instead: a column of `[{role, content}]` lists (system / user / assistant; every assistant turn is trained on)"""
    system: str | None = None
    """a system message put before each prompt/response row"""
    template: Literal["auto", "chat", "plain"] = "auto"
    """the tokenizer's chat template (auto: when it has one), or the plain `User: …` / `Assistant: …<eos>` lines"""
    loss_on: Literal["response", "all"] = "response"
    """train on the assistant turns only (prompt tokens get no loss), or on every token"""
    packing: bool = True
    """several examples per `block_size` row with positions restarting per example: no attention across examples (not
    with `attention: sdpa_causal` / `fa4`); false: one example per row, padded per batch"""
    group_column: Annotated[str | None, Doc(default="null (`synset` for builtin:definitions)")] = None
    """rows sharing this column's value stay in one split when validation/test are carved from train"""


class DataSpec(Strict):
    source: str = "builtin:fine_foods"
    """`builtin:fine_foods` (4,000 train / 1,000 test reviews, great vs other), `builtin:austen` (six novels; Persuasion
    is the test text), or a path: a `.jsonl`, `.csv`/`.tsv`, `.txt`, `.parquet` file, a `datasets` folder saved with
    `save_to_disk`, or a folder of such files. Files named `train.*`, `validation.*`, `test.*` are used as those splits;
    other names are all training data. A `.txt` file is one document"""
    format: Literal["auto", "jsonl", "csv", "txt", "parquet", "datasets"] = "auto"
    """how to read `source` (auto: by suffix / folder contents)"""
    validation_source: str | None = None
    """a separate file (or folder) for the validation split"""
    test_source: str | None = None
    """a separate file (or folder) for the test split"""
    text_column: Annotated[str | None, Doc(default="`text` (`review` for the built-in reviews)")] = None
    """column holding the text"""
    label_column: Annotated[str | None, Doc(default="`label` (`score` for the built-in reviews)")] = None
    """column holding the label (classification)"""
    labels: Annotated[list[str] | None, Doc(default="the sorted training labels")] = None
    """label names in id order (saved with the model)"""
    unseen_labels: Literal["error", "drop"] = "error"
    """what to do with validation/test rows whose label never occurs in training"""
    clean: CleanSpec = CleanSpec()
    validation_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    """carved from train when the source has no validation split (stratified, seeded); LM: the tail of the training
    stream"""
    test_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    """carved from train when the source has no test split"""
    split_seed: int = 0
    """seed of the splits and subsamples"""
    max_train_examples: int | None = Field(None, ge=1)
    """subsample (seeded) the training split to this many examples; for `causal_lm`, blocks"""
    max_validation_examples: int | None = Field(None, ge=1)
    """subsample (seeded) the validation split to this many examples; for `causal_lm`, blocks"""
    max_test_examples: int | None = Field(None, ge=1)
    """subsample (seeded) the test split to this many examples; for `causal_lm`, blocks"""
    max_length: int = Field(128, ge=8, le=32768)
    """classification: truncation length in tokens"""
    block_size: int = Field(256, ge=8, le=32768)
    """causal LM: tokens per packed block (documents joined with EOS)"""
    bucket: bool = True
    """classification: length-bucketed batches (sort within windows of 50 batches, shuffle batches)"""
    pad_to_multiple_of: int | None = Field(None, ge=1, le=4096)
    """classification: pad each batch to a multiple of this many tokens (capped at `max_length`): with `bucket`, few
    batch shapes, so `compile_dynamic: static` keeps one fast graph per shape (reviews, batch 64, multiple 16: 7 widths,
    91% real tokens vs 59% when padding random batches to their longest row like the HF Trainer;
    `benchmarks/padding_stats.py`)"""
    encoding_errors: Literal["replace", "strict"] = "replace"
    """undecodable bytes become U+FFFD (counted in the report) or stop the run"""
    sft: SFTSpec | None = None
    """`causal_lm` only: the data are conversations for instruction fine-tuning, the loss on the responses ([LoRA
    card](methods/lora.md)). `source: builtin:definitions` is WordNet's glosses as "What does the noun "X" mean?" →
    answer pairs"""



Stage = Annotated[Union[tuple(t.spec for t in TECHNIQUES.values())], Field(discriminator="kind")]


# ------------------------------------------------------------------------------------------ run/measure
class MeasureSpec(Strict):
    latency: bool = True
    """measure latency and throughput"""
    validation: bool = False
    """also evaluate every stage on the validation split (`validation_quality` in the report); `trainopt tune` and a
    `budget:` turn it on"""
    classical: bool = True
    """a classical baseline row (src/trainopt/classical.py): TF-IDF word 1-2-grams + char 2-5-grams + logistic
    regression (C and class weighting chosen on validation macro-F1) for classification, an interpolated bigram over the
    run's tokens for causal LMs; every stage's `vs_classical` says whether it beats it"""
    batch_sizes: list[int] = [1, 32]
    """latency batch sizes; the report has `latency_ms_b<N>_p50` / `_p95` / `_q25` / `_q75` for each"""
    warmup: int = Field(3, ge=0)
    """untimed calls before timing"""
    repeats: int = Field(20, ge=1)
    """timed calls per model (in rounds of 2, at least 3 rounds; fewer if `max_seconds` is reached)"""
    max_seconds: float = Field(15.0, gt=0.0)
    """time cap per batch size and timed model"""
    seq_len: int | None = Field(None, ge=1)
    """causal LM: tokens per latency input (default min(block_size, 128))"""
    generate_tokens: int = Field(32, ge=0)
    """causal LM: greedy tokens generated at batch 1 from a fixed 32-token prompt, for `generate_tokens_per_s_b1` (0:
    skip)"""
    samples: int = Field(3, ge=0, le=20)
    """SFT data: the first N held-out prompts, answered greedily by every stage and shown in the report next to the
    reference"""
    interleave: bool = True
    """time each stage again next to its parent and the baseline (alternating rounds: ratios under the same load, with
    95% intervals); false: ratios of figures each stage measured alone"""

    @model_validator(mode="after")
    def _sizes(self):
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError("measure.batch_sizes must be a non-empty list of positive integers")
        return self


class RunSpec(Strict):
    seed: int = 0
    """seeds model initialisation, dropout and data order; each stage starts from its own seed (`seed` + 1000 × its
    index in `stages`), so a stage draws the same whatever ran before it in the process (a resumed chain equals the
    uninterrupted one)"""
    deterministic: bool = False
    """deterministic algorithms; with it, a killed and resumed CPU run ends with bit-identical weights"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available"""
    threads: int | None = Field(None, ge=1)
    """CPU threads for PyTorch"""
    peak_flops: float | None = Field(None, gt=0.0)
    """peak FLOP/s of the device, for MFU where trainopt has no table entry (CPUs)"""
    tensorboard: bool = True
    """also write TensorBoard event files"""
    progress: bool = True
    """show rich progress bars"""
    pin_memory: bool = True
    """CUDA: copy micro-batches from pinned host memory (asynchronous copies); no effect on CPU"""


class Recipe(Strict):
    name: str = Field("run", pattern=NAME)
    """run name; the run directory is `runs/<name>` unless `--out` is given. Letters, digits, `_ - .`"""
    task: Literal["classification", "causal_lm"] = "classification"
    """sequence classification (accuracy, macro-F1) or causal language modelling (loss, perplexity)"""
    model: ModelSpec
    """see [model](#model)"""
    data: DataSpec = DataSpec()
    """see [data](#data)"""
    stages: Annotated[list[Stage], Doc(type="list of mappings (≥ 1)")] = Field(min_length=1)
    """see [stages](#stages); run in order, each starting from the previous stage's model"""
    run: RunSpec = RunSpec()
    """see [run](#run)"""
    measure: MeasureSpec = MeasureSpec()
    """see [measure](#measure)"""
    search: SearchSpec | None = None
    """the Optuna study `trainopt tune` runs over this recipe: see [search](#search) (`trainopt run` ignores it)"""
    budget: BudgetSpec | None = None
    """the quality budget of every compression stage: see [budget](#any-stage-budget)"""

    @model_validator(mode="after")
    def _cross(self):
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique; '{dup[0]}' appears twice (give each stage a name:)")
        for i, stage in enumerate(self.stages):  # each training knows where it sits, for the errors it raises
            for sub, settings in stage.trainings():
                settings.set_key(stage_key(i, sub))
        for i, stage in enumerate(self.stages):
            for key in ("from_stage", "teacher_stage"):
                ref = getattr(stage, key, None)
                if ref is not None and ref not in names[:i]:
                    raise RecipeError(stage_key(i, key), f"'{ref}' is not an earlier stage",
                                      f"use one of {names[:i]}" if i else "the first stage starts from model:")
                if ref is not None and self.stages[names.index(ref)].kind == "export":
                    raise RecipeError(stage_key(i, key), f"'{ref}' is an export (a copy in another runtime's format)",
                                      "name the stage it exported")
            if getattr(stage, "teacher", None) and getattr(stage, "teacher_stage", None):
                raise RecipeError(stage_key(i, "teacher_stage"), "teacher and teacher_stage are exclusive",
                                  "name a folder (teacher) or an earlier stage (teacher_stage), not both")
        if self.search is not None:
            for j, obj in enumerate(self.search.objectives):
                if obj.stage is not None and obj.stage not in names:
                    close = difflib.get_close_matches(obj.stage, names, n=1)
                    raise RecipeError(f"search.objectives.{j}.stage", f"no stage named '{obj.stage}'",
                                      f"did you mean '{close[0]}'?" if close else f"stages: {names}")
                batch = batch_of_latency_key(obj.metric)
                if batch is not None and batch not in self.measure.batch_sizes:
                    raise RecipeError(f"search.objectives.{j}.metric", f"batch size {batch} is not measured",
                                      f"use one of measure.batch_sizes {self.measure.batch_sizes}")
        return self

    def stage(self, name: str):
        return next(s for s in self.stages if s.name == name)

    def stage_index(self, name: str) -> int:
        """The position of a stage, the `<i>` of the `stages.<i>.<key>` an error names."""
        return next(i for i, s in enumerate(self.stages) if s.name == name)
