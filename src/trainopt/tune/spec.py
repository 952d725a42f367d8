"""Recipe schema of `search:` — the Optuna study `trainopt tune` runs over a recipe (docs/methods/tune.md)."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from ..results import batch_of_latency_key
from ..specbase import Doc, Strict

QUALITY_METRICS = ("accuracy", "f1_macro", "loss", "perplexity")
OTHER_METRICS = ("params", "nonzero_params", "disk_bytes", "throughput_items_per_s", "wall_s", "tokens_per_s",
                 "mfu", "peak_mem_bytes")
MAXIMIZED = ("accuracy", "f1_macro", "throughput_items_per_s", "tokens_per_s", "mfu")


class ParamSpec(Strict):
    """One searched recipe key: a float or int range (optionally log-scaled or stepped), or a list of choices."""

    type: Literal["float", "int", "categorical"]
    """a number range (`float`, `int`) or a list of `choices`"""
    low: float | None = None
    """float / int: the smallest value (required)"""
    high: float | None = None
    """float / int: the largest value (required)"""
    log: bool = False
    """float / int: sample on a log scale (needs `low` > 0; not with `step`)"""
    step: float | None = Field(None, gt=0.0)
    """float / int: only values low + k·step (a grid search needs it for floats)"""
    choices: Annotated[list[bool | int | float | str | None] | None, Doc(type="list of scalars or null")] = None
    """categorical: the values tried (YAML scalars)"""

    @model_validator(mode="after")
    def _shape(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty choices: list")
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("a categorical parameter takes choices:, not low/high/step/log")
            return self
        if self.choices is not None:
            raise ValueError(f"choices: applies to type: categorical, not {self.type}")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs low: and high:")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scaled range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("log: true and step: are exclusive (Optuna samples one or the other)")
        if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()
                                       and (self.step is None or float(self.step).is_integer())):
            raise ValueError("an int parameter needs whole-number low, high and step")
        return self

    def grid(self) -> list | None:
        """The values a grid search visits, or None for a continuous range."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))
        if self.step is None:
            return None
        n = int(round((self.high - self.low) / self.step))
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]


class ObjectiveSpec(Strict):
    """What a trial is scored on: a metric of one stage's report entry."""

    metric: Annotated[str, Doc(default="the task's: `accuracy` (classification), `loss` (causal LM)")] = "accuracy"
    """`accuracy`, `f1_macro`, `loss`, `perplexity`, `latency_ms_b<N>_p50` (N a measured batch size), `disk_bytes`,
    `params`, `nonzero_params`, `throughput_items_per_s`, `wall_s`, `tokens_per_s`, `mfu` or `peak_mem_bytes` of the
    stage's report entry"""
    direction: Annotated[Literal["maximize", "minimize"] | None, Doc(
        default="maximize accuracy, F1, throughput, tokens/s and MFU; minimize the rest")] = None
    """whether larger is better"""
    stage: Annotated[str | None, Doc(default="the last stage")] = None
    """the stage whose figure is scored"""
    split: Literal["validation", "test"] = "validation"
    """quality metrics: the split they are read on (tune on validation; test only to report)"""

    @model_validator(mode="after")
    def _metric(self):
        m = self.metric
        if not (m in QUALITY_METRICS or m in OTHER_METRICS or batch_of_latency_key(m) is not None):
            close = difflib.get_close_matches(m, [*QUALITY_METRICS, *OTHER_METRICS, "latency_ms_b32_p50"], n=1)
            raise ValueError(f"unknown objective metric '{m}'" + (f"; did you mean '{close[0]}'?" if close else
                             "; use a quality metric (accuracy, f1_macro, loss, perplexity), latency_ms_b<N>_p50, "
                             "disk_bytes, params, nonzero_params or throughput_items_per_s"))
        if self.direction is None:
            self.direction = "maximize" if m in MAXIMIZED else "minimize"
        return self


class PrunerSpec(Strict):
    """Stop unpromising trials early, from the loop's periodic validation (the k-th evaluation of every trial
    is compared with the k-th of the others)."""

    name: Literal["none", "median", "percentile", "halving", "hyperband"] = "median"
    """Optuna's pruner: `median` (below the median of earlier trials at the same evaluation), `percentile`,
    `halving` (successive halving), `hyperband`, or `none`"""
    startup_trials: int = Field(5, ge=0)
    """median / percentile: trials that finish before any is pruned"""
    warmup_evals: int = Field(1, ge=0)
    """median / percentile: a trial's first evaluations are never pruned"""
    percentile: float = Field(25.0, gt=0.0, lt=100.0)
    """percentile: prune below this percentile of earlier trials"""
    reduction_factor: int = Field(3, ge=2)
    """halving / hyperband: the factor by which each rung keeps fewer trials"""
    min_resource: int = Field(1, ge=1)
    """halving / hyperband: evaluations before the first rung"""
    patience: int | None = Field(None, ge=1)
    """wrap the pruner in Optuna's PatientPruner: it may stop a trial only once the best of its last `patience` + 1
    evaluations fell below its earlier best by more than `min_delta`; with `name: none`, that alone stops it (early
    stopping per trial)"""
    min_delta: float = Field(0.0, ge=0.0)
    """with `patience`: the smallest change that counts as an improvement"""

    @property
    def active(self) -> bool:
        """Whether trials can be pruned at all (a patience alone stops trials that stopped improving)."""
        return self.name != "none" or self.patience is not None

    def label(self) -> str:
        return self.name + (f"+patience{self.patience}" if self.patience is not None else "")


class SearchSpec(Strict):
    """`trainopt tune`: an Optuna study over recipe keys (see docs/methods/tune.md)."""

    space: dict[str, ParamSpec] = Field(min_length=1)
    """recipe key path → `{type: float|int|categorical, low, high, log, step, choices}`"""
    objectives: Annotated[list[ObjectiveSpec], Doc(
        default="`[{metric: accuracy}]` (classification), `[{metric: loss}]` (causal LM)")] = Field(
        [ObjectiveSpec()], min_length=1, max_length=4)
    """what a trial is scored on (1 to 4 objectives; several: a Pareto front)"""
    trials: int | None = Field(20, ge=1)
    """finished (complete or pruned) trials"""
    timeout_s: float | None = Field(None, gt=0.0)
    """no new trial after this many seconds"""
    max_trial_steps: int | None = Field(None, ge=1)
    """compute budget: no new trial once the study's trials have run this many optimizer steps (a running trial
    finishes)"""
    sampler: Literal["tpe", "random", "grid", "gp", "nsga2"] = "tpe"
    """Optuna's sampler: TPE, random, grid (every combination of discrete values), Gaussian process or NSGA-II"""
    startup_trials: int = Field(8, ge=0)
    """tpe / gp: random trials before the model takes over"""
    pruner: PrunerSpec = PrunerSpec()
    """stop unpromising trials early, from the training's periodic validation (keys below)"""
    seed: Annotated[int | None, Doc(default="`run.seed`")] = None
    """sampler seed (worker k: seed + k)"""
    storage: str | None = None
    """sqlite:///… or postgresql://…; null: study.db in the study directory"""
    study_name: Annotated[str | None, Doc(default="the recipe's `name`")] = None
    """the study's name in the storage"""
    heartbeat_s: int = Field(30, ge=1)
    """a trial silent for two heartbeats is failed"""
    max_failures: int = Field(5, ge=1)
    """stop the study (one line with the first failure's error; study.json/md written) after this many failed trials in
    a row"""
    keep_models: Literal["best", "all", "none"] = "best"
    """trial model folders kept: the best (or Pareto-optimal) trials', every trial's, or none"""
    enqueue: list[dict[str, Any]] = []
    """parameter sets (keys of `search.space`) run before the sampler's proposals"""

    @model_validator(mode="after")
    def _consistent(self):
        if self.trials is None and self.timeout_s is None and self.max_trial_steps is None:
            raise ValueError("set search.trials, search.timeout_s or search.max_trial_steps (any combination)")
        if len(self.objectives) > 1 and self.pruner.active:
            raise ValueError("Optuna prunes single-objective studies only; with several objectives set "
                             "search.pruner.name: none (and no patience)")
        if self.pruner.active and not (self.objectives[0].metric in QUALITY_METRICS
                                               and self.objectives[0].split == "validation"):
            raise ValueError("trial pruning follows the validation metric during training; the objective must be "
                             "a quality metric on split: validation (or set search.pruner.name: none)")
        for i, params in enumerate(self.enqueue):
            unknown = [k for k in params if k not in self.space]
            if unknown:
                raise ValueError(f"search.enqueue.{i}: '{unknown[0]}' is not a key of search.space")
        if self.sampler == "grid":
            continuous = [k for k, p in self.space.items() if p.grid() is None]
            if continuous:
                raise ValueError(f"grid search needs discrete values; give search.space.{continuous[0]} a step: "
                                 "or choices:")
        return self
