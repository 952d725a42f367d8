"""Recipe schema of the `quantize` stage (docs/methods/quantize.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ...specbase import NAME, StageBase, Strict
from ...train.spec import TrainSettings


class SmoothSpec(Strict):
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    calibration_batches: int = Field(8, ge=1)


class QuantizeStage(StageBase):
    kind: Literal["quantize"]
    name: str = Field("quantize", pattern=NAME)
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


    def trainings(self):
        return [("qat", self.qat)] if self.qat is not None else []

    def weaker(self, trial, info: dict) -> QuantizeStage:
        """Which parts stay float, drawn by an Optuna trial (budget_search.py): the embeddings, the output head, and
        the first and last blocks (a count of each; the rest is quantised as written)."""
        n = info["num_layers"]
        first = trial.suggest_int("float_first_blocks", 0, n)
        last = trial.suggest_int("float_last_blocks", 0, n - first)
        embeddings = self.embeddings and trial.suggest_categorical("quantize_embeddings", [True, False])
        head = trial.suggest_categorical("float_head", [False, True])
        blocks = [f"{info['block_prefix']}.{i}." for i in list(range(first)) + list(range(n - last, n))]
        skip = list(self.skip) + blocks + (list(info["head"]) if head else [])
        return self.model_copy(update={"skip": skip, "embeddings": embeddings})
