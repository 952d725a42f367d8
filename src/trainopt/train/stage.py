"""The `train` stage: fine-tune (from a checkpoint) or pretrain (from a config) with train/loop.py. The model keeps
its shape: effect `unchanged`."""

from __future__ import annotations

from pathlib import Path

from .loop import train
from .spec import TrainStage


def run(model, data, stage: TrainStage, ctx, stage_dir: Path):
    summary = train(model, data, stage, ctx, stage_dir)
    return model, {"effect": "unchanged", "training": summary,
                   "cost": {"wall_s": summary["train_wall_s"], "tokens_per_s": summary["tokens_per_s"],
                            "mfu": summary["mfu"], "peak_mem_bytes": summary["peak_mem_bytes"]}}
