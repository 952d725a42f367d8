"""Validation inside training: evaluate on the validation split every `eval_every` steps, keep the best weights
(written atomically), stop early when the metric stalls, tell the caller's hook (a tuning study's pruner), and put the
best weights back at the end."""

from __future__ import annotations

import os
import time
from pathlib import Path

from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model

from ..evaluate import METRICS, default_metric, evaluate, is_better
from . import checkpoint as ckpt
from . import distributed
from .loss import unwrapped
from .monitor import console
from .state import TrainState


class Validator:
    def __init__(self, engine, data, ctx, dd, best_file: Path, first_best: int = 0):
        self.engine, self.split, self.ctx, self.dd, self.best_file = engine, data.validation, ctx, dd, best_file
        self.stage = engine.stage
        self.task = ctx.recipe.task
        self.metric = self.stage.metric or default_metric(self.task, getattr(data.train, "labels", None))
        self.mode = METRICS[self.task][self.metric]
        self.first_best = first_best  # evaluations before this step neither count as best nor stall the run

    def due(self, step: int) -> bool:
        return self.split is not None and (step % self.engine.eval_every == 0 or step == self.engine.total_steps)

    def run(self, state: TrainState) -> float:
        """Evaluate now; update the best metric/step, the saved best weights and early stopping. Returns the
        seconds it took (left out of the throughput window)."""
        e, stage, start = self.engine, self.stage, time.perf_counter()
        quality = evaluate(e.work, self.split, self.task, stage.eval_batch_size, self.ctx.device, e.autocast_dtype)
        value = quality[self.metric]
        counts = state.step >= self.first_best
        improved = counts and is_better(value, state.best_metric, self.mode,
                                        stage.early_stopping.min_delta if stage.early_stopping else 0.0)
        if improved:
            state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
            if stage.keep_best:
                save_weights(e.trainable, self.best_file, self.dd, e.fsdp)
            distributed.barrier(self.dd)
        elif counts:
            state.evals_without_improvement += 1
        if stage.early_stopping and state.evals_without_improvement >= stage.early_stopping.patience:
            state.stopped_early = True
        self.ctx.log.log(stage.name, state.step, **{f"val_{k}": v for k, v in quality.items()
                                                    if isinstance(v, (int, float))}, best=improved)
        seconds = time.perf_counter() - start
        if self.ctx.hooks.on_eval is not None:  # a tuning study's pruner (may stop the trial)
            self.ctx.hooks.on_eval(stage.name, state.step, quality)
        return seconds

    def restore_best(self, state: TrainState, trainable) -> None:
        if self.stage.keep_best and state.best_step is not None and self.best_file.is_file() \
                and state.best_step != state.step:
            st_load_model(trainable, str(self.best_file), device=str(self.ctx.device))
            console.print(f"restored the best weights (step {state.best_step}, val {self.metric} "
                          f"{state.best_metric})")


def save_weights(trainable, path: Path, dd, sharded: bool) -> None:
    """The best weights so far, atomically: rank 0 writes them (gathered from every rank's shard under FSDP2)."""
    tmp = path.with_name(path.name + ".tmp")
    if sharded:
        full, _ = distributed.full_state(trainable)  # a collective: every rank joins
        if not dd.is_main:
            return
        ckpt.save_full_weights(unwrapped(full), tmp)
    elif dd.is_main:
        st_save_model(trainable, str(tmp))
    else:
        return
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
