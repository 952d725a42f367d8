"""The stage registry. A stage takes (model, data, stage spec, ctx, stage_dir) and returns (model, result).

`result` holds what only the stage knows (kind, effect, training cost, notes); the runner then measures
quality, size and speed the same way for every stage, so stages are compared like for like.
New techniques (prune, distill, quantize, …) register here with @register("kind").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import measure
from .evaluate import evaluate
from .train.loop import train
from .train.monitor import MetricsLog


@dataclass
class RunContext:
    recipe: object
    run_dir: Path
    device: torch.device
    tokenizer: object
    data: object
    log: MetricsLog
    resume: bool = False
    extras: dict = field(default_factory=dict)
    dist: object = None  # train.distributed.Dist under torchrun (rank, world size); None on one process


STAGES: dict[str, Callable] = {}


def register(kind: str):
    def deco(fn):
        STAGES[kind] = fn
        return fn

    return deco


@register("train")
def train_stage(model, data, stage, ctx: RunContext, stage_dir: Path):
    """Fine-tune (from a checkpoint) or pretrain (from a config). The model keeps its shape: effect unchanged."""
    summary = train(model, data, stage, ctx, stage_dir)
    return model, {"effect": "unchanged", "training": summary,
                   "cost": {"wall_s": summary["train_wall_s"], "tokens_per_s": summary["tokens_per_s"],
                            "mfu": summary["mfu"], "peak_mem_bytes": summary["peak_mem_bytes"]}}


@register("eval")
def eval_stage(model, data, stage, ctx: RunContext, stage_dir: Path):
    """Evaluate the current model as it is (e.g. before training, to show what training bought)."""
    start = time.perf_counter()
    model.to(ctx.device)
    if data.validation is not None:
        quality = evaluate(model, data.validation, ctx.recipe.task, 64, ctx.device)
        ctx.log.log(stage.name, 0, **{f"val_{k}": v for k, v in quality.items() if isinstance(v, (int, float))})
    return model, {"effect": "unchanged",
                   "cost": {"wall_s": round(time.perf_counter() - start, 2), "tokens_per_s": None, "mfu": None,
                            "peak_mem_bytes": measure.peak_memory_bytes(ctx.device)}}


# Stage kinds defined in their own modules register themselves on import.
from .compress import distill as _distill  # noqa: E402,F401
from .compress import prune as _prune  # noqa: E402,F401
from .compress import quantize as _quantize  # noqa: E402,F401
