"""Recipe schema of the `prune` stage (docs/methods/prune.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ...specbase import NAME, Doc, StageBase, Strict
from ...train.spec import TrainSettings
from ..distill.spec import DistillLossSpec


class GradualSpec(Strict):
    """Zhu & Gupta (2017) cubic schedule: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^3 between t0 and t1."""

    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0)
    """gradual: sparsity at `start`"""
    start: float = Field(0.0, ge=0.0, lt=1.0)
    """gradual: where the cubic ramp starts, as a fraction of the training steps"""
    end: float = Field(0.7, gt=0.0, le=1.0)
    """gradual: where the ramp reaches `sparsity`, which is then held"""
    every: int = Field(10, ge=1)
    """gradual: optimizer steps between mask updates"""

    @model_validator(mode="after")
    def _order(self):
        if self.end <= self.start:
            raise ValueError("schedule.end must come after schedule.start (fractions of the training steps)")
        return self


class StructuredSpec(Strict):
    """Structured pruning: remove attention heads and FFN neurons by slicing the Linear layers."""

    heads: float = Field(0.0, ge=0.0, lt=1.0)
    """fraction of attention heads removed (BERT-style encoders; not grouped-KV decoders)"""
    ffn: float = Field(0.0, ge=0.0, lt=1.0)
    """fraction of FFN neurons removed (BERT- and Llama-style blocks)"""
    importance: Literal["taylor", "magnitude"] = "taylor"
    """first-order Taylor |Σ w·∂L/∂w| over calibration batches, or the group's weight norm"""
    same_per_layer: bool = True
    """the same count in every layer; false: one global ranking (per-layer counts, trainopt's loader)"""

    @model_validator(mode="after")
    def _something(self):
        if not (self.heads or self.ffn):
            raise ValueError("structured pruning needs structured.heads or structured.ffn above 0")
        return self


class PruneStage(StageBase):
    """Zero or remove the weights that matter least, optionally recover by fine-tuning, and report target vs achieved
    sparsity per layer. See [methods/prune.md](methods/prune.md)."""

    kind: Literal["prune"]
    name: str = Field("prune", pattern=NAME)
    """stage name"""
    method: Literal["magnitude", "gradual", "wanda", "structured"] = "magnitude"
    """one-shot |w|; |w| on a cubic schedule during `train`; Wanda |w|·‖x‖ per output row; heads + FFN neurons removed
    by slicing"""
    sparsity: float = Field(0.5, gt=0.0, lt=1.0)
    """unstructured target over the pruned modules (magnitude, gradual, wanda)"""
    pattern: Literal["unstructured", "2:4"] = "unstructured"
    """`"2:4"`: 2 of every 4 consecutive input weights kept (magnitude, wanda); quote it in YAML"""
    scope: Literal["global", "layer"] = "global"
    """magnitude/gradual: one threshold over all pruned modules, or the same sparsity in each (wanda always ranks per
    output row)"""
    embeddings: bool = False
    """prune the embedding matrices too"""
    classifier: bool = False
    """prune the output head (classifier, pooler, LM head) too"""
    skip: list[str] = []
    """module-name substrings never pruned"""
    structured: StructuredSpec | None = None
    """`method: structured`: what to remove (keys below); null for the other methods"""
    schedule: GradualSpec = GradualSpec()
    calibration_batches: int = Field(16, ge=1)
    """batches of training data for Wanda norms / Taylor importance"""
    train: Annotated[TrainSettings | None, Doc(type="train settings or null", expand=False)] = None
    """recovery fine-tuning with the masks fixed (gradual: required, the fine-tune it prunes during)"""
    distill: Annotated[DistillLossSpec | None, Doc(type="distill loss weights or null", expand=False)] = None
    """recover by distilling from the unpruned model (`kd`, `temperature`, `ce`, `hidden`, `attention` as in a distill
    stage); needs `train`"""
    teacher_stage: str | None = None
    """distill from this earlier stage's model instead of the unpruned input (e.g. gradual pruning from the pretrained
    model, `from_stage:` an eval stage, taught by `finetune`); needs `distill`"""
    sparse_kernels: bool = True
    """2:4 on CUDA: time the model with its 2:4 Linears on cuSPARSELt (`Sparse24Linear`; PyTorch's semi-structured
    tensor where cuSPARSELt is missing) against dense bf16, eager, graph-replayed and compiled (the stage is
    `accelerated` only if its fastest mode is ≥ 1.10x the fastest dense mode)"""

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


    def trainings(self):
        return [("train", self.train)] if self.train is not None else []

    def weaker(self, trial, info: dict) -> PruneStage:
        """A setting no stronger than this one, drawn by an Optuna trial (budget search, budget_search.py):
        structured: the heads and FFN fractions, each in [0, as written]; otherwise the sparsity in [1%, as written]."""
        if self.method == "structured":
            s = self.structured
            heads = trial.suggest_float("heads", 0.0, _hundredths(s.heads), step=0.01) if s.heads >= 0.01 else 0.0
            ffn = trial.suggest_float("ffn", 0.0, _hundredths(s.ffn), step=0.01) if s.ffn >= 0.01 else 0.0
            if not (heads or ffn):  # the smallest structured step: one FFN neuron in twenty
                ffn = 0.05
            return self.model_copy(update={"structured": s.model_copy(update={"heads": round(heads, 3),
                                                                              "ffn": round(ffn, 3)})})
        top = max(0.01, _hundredths(self.sparsity))
        return self.model_copy(update={"sparsity": round(trial.suggest_float("sparsity", 0.01, top, step=0.01), 2)})


def _hundredths(x: float) -> float:
    """x rounded down to a multiple of 0.01 (the budget search's grid)."""
    return int(x * 100 + 1e-9) / 100
