"""Before any work: what this machine lacks for a quantization method."""

from __future__ import annotations

import torch

from . import weight_only
from .spec import QuantizeStage


def check(stage: QuantizeStage, index: int, recipe, device: torch.device) -> None:
    """Before any work: what this machine lacks for the method (torchao for the weight-only methods)."""
    if stage.method != "dynamic_int8":
        weight_only.check(stage, index, device)
