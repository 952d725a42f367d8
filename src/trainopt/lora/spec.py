"""Recipe schema of the `lora` stage: PEFT's LoRA settings plus the training settings every training stage takes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..specbase import NAME, StageBase
from ..train.spec import OptimizerSpec, TrainSettings


class LoraStage(StageBase, TrainSettings):
    """Low-rank adapters on a frozen model through PEFT ([method card](methods/lora.md)). Takes every key of
    `kind: train` above (optimizer default: AdamW, lr 2e-4, weight decay 0; `parallel: fsdp` is refused) plus:"""

    kind: Literal["lora"]
    name: str = Field("lora", pattern=NAME)
    """stage name"""
    rank: int = Field(16, ge=1, le=4096)
    """adapter width r"""
    alpha: float = Field(32.0, gt=0.0)
    """the update is scaled by alpha / r (alpha / sqrt(r) with `rslora`)"""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """dropout on the adapters' input"""
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    """Linear layers that get adapters: every attention and MLP projection (never the output head), or module names
    matched as suffixes (`[q_proj, v_proj]`)"""
    dora: bool = False
    """DoRA: a learned magnitude per output feature"""
    rslora: bool = False
    """rank-stabilised scaling alpha / sqrt(r)"""
    quantize_base: Literal["none", "nf4", "fp4"] = "none"
    """QLoRA: the frozen base's Linear layers (all but the output head) in 4-bit through bitsandbytes (CUDA and CPU)
    while the adapters train; merged into the dequantised base"""
    double_quant: bool = True
    """with `quantize_base`: the 4-bit blocks' scales stored in 8 bits too"""
    merge: bool = True
    """true: the stage's folder holds the merged weights (plain HF; the PEFT adapter in `stages/<name>/adapter/`);
    false: the folder is the adapter alone (only `eval` may follow)"""
    optimizer: OptimizerSpec = OptimizerSpec(lr=2e-4, weight_decay=0.0)  # adapters take a larger step than full FT

    def trainings(self):
        return [("", self)]
