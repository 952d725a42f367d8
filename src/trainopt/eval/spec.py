"""Recipe schema of the `eval` stage: evaluate and measure the current model as it is."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..specbase import NAME, StageBase


class EvalStage(StageBase):
    """Evaluate and measure the current model as it is (e.g. the untrained or pretrained model, before training)."""

    kind: Literal["eval"]
    name: str = Field("eval", pattern=NAME)
    """stage name"""
