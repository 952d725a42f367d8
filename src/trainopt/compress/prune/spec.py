"""Recipe schema of the `prune` stage (docs/methods/prune.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ...specbase import NAME, StageBase, Strict
from ...train.spec import TrainSettings
from ..distill.spec import DistillLossSpec


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
    name: str = Field("prune", pattern=NAME)
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
