"""The `eval` stage: evaluate the current model as it is (e.g. before training, to show what training bought)."""

from __future__ import annotations

import time
from pathlib import Path

from .. import measure
from ..evaluate import evaluate
from ..results import Outcome
from .spec import EvalStage


def run(model, data, stage: EvalStage, ctx, stage_dir: Path):
    start = time.perf_counter()
    model.to(ctx.device)
    if data.validation is not None:
        quality = evaluate(model, data.validation, ctx.recipe.task, 64, ctx.device)
        ctx.log.log(stage.name, 0, **{f"val_{k}": v for k, v in quality.items() if isinstance(v, (int, float))})
    return model, Outcome(effect="unchanged", cost={"wall_s": round(time.perf_counter() - start, 2),
                          "tokens_per_s": None, "mfu": None, "peak_mem_bytes": measure.peak_memory_bytes(ctx.device)})
