"""Recipe schema of `search:` — the Optuna study `trainopt tune` runs over a recipe (docs/methods/tune.md)."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import Field, model_validator

from ..results import batch_of_latency_key
from ..specbase import Strict

QUALITY_METRICS = ("accuracy", "f1_macro", "loss", "perplexity")
OTHER_METRICS = ("params", "nonzero_params", "disk_bytes", "throughput_items_per_s", "wall_s", "tokens_per_s",
                 "mfu", "peak_mem_bytes")
MAXIMIZED = ("accuracy", "f1_macro", "throughput_items_per_s", "tokens_per_s", "mfu")


class ParamSpec(Strict):
    """One searched recipe key: a float or int range (optionally log-scaled or stepped), or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0.0)
    choices: list[bool | int | float | str | None] | None = None

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

    # accuracy, f1_macro, loss, perplexity, latency_ms_b<N>_p50, disk_bytes, params, …; default: the task's own
    # quality metric (accuracy for classification, loss for a causal LM: tune/space.py check_objectives)
    metric: str = "accuracy"
    direction: Literal["maximize", "minimize"] | None = None  # default: maximize accuracy-like, minimize others
    stage: str | None = None  # default: the last stage
    split: Literal["validation", "test"] = "validation"  # quality metrics: tune on validation, never on test

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
    startup_trials: int = Field(5, ge=0)  # median / percentile: trials that finish before any is pruned
    warmup_evals: int = Field(1, ge=0)  # median / percentile: a trial's first evaluations are never pruned
    percentile: float = Field(25.0, gt=0.0, lt=100.0)  # percentile: prune below this percentile of earlier trials
    reduction_factor: int = Field(3, ge=2)  # halving / hyperband
    min_resource: int = Field(1, ge=1)  # halving / hyperband: evaluations before the first rung
    # Optuna's PatientPruner around the chosen pruner: the pruner may act only once the best of the trial's last
    # patience + 1 evaluations is below the best before them by more than min_delta (the trial got worse); with
    # name: none, that alone stops the trial (early stopping per trial)
    patience: int | None = Field(None, ge=1)
    min_delta: float = Field(0.0, ge=0.0)

    @property
    def active(self) -> bool:
        """Whether trials can be pruned at all (a patience alone stops trials that stopped improving)."""
        return self.name != "none" or self.patience is not None

    def label(self) -> str:
        return self.name + (f"+patience{self.patience}" if self.patience is not None else "")


class SearchSpec(Strict):
    """`trainopt tune`: an Optuna study over recipe keys (see docs/methods/tune.md)."""

    space: dict[str, ParamSpec] = Field(min_length=1)  # recipe key path (as for --set) → range
    objectives: list[ObjectiveSpec] = Field([ObjectiveSpec()], min_length=1, max_length=4)
    trials: int | None = Field(20, ge=1)  # finished (complete or pruned) trials; null: until timeout_s
    timeout_s: float | None = Field(None, gt=0.0)  # no new trial starts after this (a running one finishes)
    max_trial_steps: int | None = Field(None, ge=1)  # compute budget: no new trial once trials ran this many steps
    sampler: Literal["tpe", "random", "grid", "gp", "nsga2"] = "tpe"
    startup_trials: int = Field(8, ge=0)  # tpe / gp: random trials before the model takes over
    pruner: PrunerSpec = PrunerSpec()
    seed: int | None = None  # default: run.seed (worker k uses seed + k)
    storage: str | None = None  # default: sqlite in the run directory; postgresql://… for many workers/machines
    study_name: str | None = None  # default: the recipe name
    heartbeat_s: int = Field(30, ge=1)  # a trial silent for 2 heartbeats (its worker died) is marked failed
    max_failures: int = Field(5, ge=1)  # the study stops after this many failed trials in a row (the first's error)
    keep_models: Literal["best", "all", "none"] = "best"  # trial model folders kept: best/Pareto trials only
    enqueue: list[dict[str, Any]] = []  # trials to run first, e.g. [{stages.finetune.optimizer.lr: 1.0e-4}]

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
