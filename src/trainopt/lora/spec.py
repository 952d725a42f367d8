"""Recipe schema of the `lora` stage: PEFT's LoRA settings plus the training settings every training stage takes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..specbase import NAME, StageBase
from ..train.spec import OptimizerSpec, TrainSettings


class LoraStage(StageBase, TrainSettings):
    kind: Literal["lora"]
    name: str = Field("lora", pattern=NAME)
    rank: int = Field(16, ge=1, le=4096)  # r: the adapters' inner width
    alpha: float = Field(32.0, gt=0.0)  # the update is scaled by alpha / rank (alpha / sqrt(rank) with rslora)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)  # dropout on the adapters' input
    # which Linear layers get adapters: all-linear (every attention and MLP projection, never the output head) or
    # module names (e.g. [q_proj, v_proj]); PEFT matches them as name suffixes
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    dora: bool = False  # DoRA: a learned magnitude per output feature on top of the low-rank direction
    rslora: bool = False  # rank-stabilised scaling alpha / sqrt(rank)
    # QLoRA: the frozen base's Linear layers (all but the output head) stored in 4-bit through bitsandbytes while the
    # adapters train in bf16 / fp32: nf4 (QLoRA's NormalFloat), fp4, or none (the base in the autocast dtype)
    quantize_base: Literal["none", "nf4", "fp4"] = "none"
    double_quant: bool = True  # with quantize_base: the 4-bit blocks' scales stored in 8-bit too (QLoRA's default)
    # true: the stage's model folder holds the merged weights (a plain HF model; the adapter is kept in adapter/);
    # false: it holds the adapter alone (a PEFT folder on the parent stage's model)
    merge: bool = True
    optimizer: OptimizerSpec = OptimizerSpec(lr=2e-4, weight_decay=0.0)  # adapters take a larger step than full FT

    def trainings(self):
        return [("", self)]
