"""The Recipe: model, data, the chain of stages (their schemas come from trainopt/techniques.py), run, measure and
search settings."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from ..errors import RecipeError
from ..results import batch_of_latency_key
from ..specbase import NAME, BudgetSpec, Strict, stage_key
from ..techniques import TECHNIQUES
from ..tune.spec import SearchSpec


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
    dedup: bool = True  # drop exact repeats of a (text, label) pair; texts with several labels are kept, counted
    # held-out texts that also sit in the training split (data/dedup.py): drop them from validation/test (keeps every
    # training row), drop the training copies (the held-out splits stay as given), or only count them
    overlap: Literal["drop_test", "drop_train", "keep"] = "drop_test"


class SFTSpec(Strict):
    """Supervised fine-tuning data (data/sft.py): conversations, the loss on the responses only."""

    prompt_column: str = "prompt"  # one user turn per row ...
    response_column: str = "response"  # ... answered by this
    messages_column: str | None = None  # or: a column of [{role, content}] lists (system / user / assistant)
    system: str | None = None  # a system message put before each prompt/response row
    template: Literal["auto", "chat", "plain"] = "auto"  # auto: the tokenizer's chat template if it has one
    loss_on: Literal["response", "all"] = "response"  # train on the assistant turns only, or on every token
    packing: bool = True  # several examples per data.block_size row (no attention across them); false: one per row
    group_column: str | None = None  # rows sharing this column's value stay in one split (builtin:definitions: synset)


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
    sft: SFTSpec | None = None  # task causal_lm: prompt/response or chat data instead of plain text



Stage = Annotated[Union[tuple(t.spec for t in TECHNIQUES.values())], Field(discriminator="kind")]


# ------------------------------------------------------------------------------------------ run/measure
class MeasureSpec(Strict):
    latency: bool = True
    validation: bool = False  # also evaluate every stage on the validation split (tune turns it on)
    # a classical baseline row (classical.py): TF-IDF + logistic regression (classification) or a bigram model
    # (causal LM) trained on the same split; every stage says whether it beats it
    classical: bool = True
    batch_sizes: list[int] = [1, 32]
    warmup: int = Field(3, ge=0)
    repeats: int = Field(20, ge=1)
    max_seconds: float = Field(15.0, gt=0.0)
    seq_len: int | None = Field(None, ge=1)
    generate_tokens: int = Field(32, ge=0)
    samples: int = Field(3, ge=0, le=20)  # SFT data: held-out prompts each stage answers (greedy) in the report
    # time each stage again next to its parent and the baseline, in alternating rounds, so that a speed ratio compares
    # models under the same machine load and carries a 95% interval (timing.py); false: ratios of figures each stage
    # measured alone (cheaper; a load change between stages lands in the ratio)
    interleave: bool = True

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
    name: str = Field("run", pattern=NAME)
    task: Literal["classification", "causal_lm"] = "classification"
    model: ModelSpec
    data: DataSpec = DataSpec()
    stages: list[Stage] = Field(min_length=1)
    run: RunSpec = RunSpec()
    measure: MeasureSpec = MeasureSpec()
    search: SearchSpec | None = None  # used by `trainopt tune`; `trainopt run` runs the recipe as written
    budget: BudgetSpec | None = None  # the quality budget of every compression stage (a stage's own budget: replaces)

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
