"""The `train` stage: fine-tune (from a checkpoint) or pretrain (from a config) with train/loop.py. The model keeps
its shape: effect `unchanged`."""

from __future__ import annotations

from pathlib import Path

from ..results import Outcome
from .loop import train
from .spec import TrainStage


def run(model, data, stage: TrainStage, ctx, stage_dir: Path):
    summary = train(model, data, stage, ctx, stage_dir)
    return model, Outcome.trained(summary)
