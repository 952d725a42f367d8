"""The study's recipe: the base recipe, one trial's recipe (the sampled values set as `--set` would), and the
search space checked against the recipe before any trial runs."""

from __future__ import annotations

import copy
import hashlib
import json
import os

import yaml

from ..errors import RecipeError
from ..recipe import QUALITY_METRICS, Recipe, SearchSpec, apply_overrides, check_paths, parse_recipe, read_yaml, resolve_recipe_path, set_path




class BudgetReached(Exception):
    """Raised inside a trial that another worker's concurrent trial made one too many."""


# ----------------------------------------------------------------------------------------------- recipes
def load_study_recipe(spec, overrides: list[str] | None) -> tuple[dict, Recipe]:
    """The raw recipe (after --set) and its validated form; the search block must exist and fit the recipe."""
    if isinstance(spec, dict):
        raw = copy.deepcopy(spec)
    else:
        raw = read_yaml(resolve_recipe_path(str(spec) if spec is not None else None))
    raw = apply_overrides(raw, overrides or [])
    recipe = parse_recipe(raw)
    if recipe.search is None:
        raise RecipeError("search", "this recipe has no search: block", "add one (see docs/methods/tune.md) or use "
                          "`trainopt run`")
    check_paths(recipe)
    check_objectives(raw, recipe)
    check_space(raw, recipe.search)
    return raw, recipe


def check_objectives(raw: dict, recipe: Recipe) -> None:
    """The default objective is the task's own quality metric (accuracy for classification, the held-out loss for
    a causal LM); a quality metric the task does not measure is refused before trial 1."""
    from ..evaluate import DEFAULT_METRIC, METRICS

    task = recipe.task
    written = (raw.get("search") or {}).get("objectives") or [{}]
    for i, o in enumerate(recipe.search.objectives):
        given = written[i] if i < len(written) and isinstance(written[i], dict) else {}
        if "metric" not in given:
            o.metric = DEFAULT_METRIC[task]
            if "direction" not in given:
                o.direction = "maximize" if METRICS[task][o.metric] == "max" else "minimize"
        elif o.metric in QUALITY_METRICS and o.metric not in METRICS[task]:
            raise RecipeError(f"search.objectives.{i}.metric", f"{task} stages do not report {o.metric}",
                              f"use one of {', '.join(METRICS[task])}")


def base_of(raw: dict) -> dict:
    """The recipe every trial starts from: the study recipe without its search block."""
    base = copy.deepcopy(raw)
    base.pop("search", None)
    return base


def trial_raw(raw: dict, search: SearchSpec, params: dict, workers: int) -> dict:
    """One trial's recipe: the base with the sampled values set, validation measured when scored on it, and no
    classical baseline row (unless the recipe asks for it)."""
    out = base_of(raw)
    for key, value in params.items():
        set_path(out, key, value)
    out.setdefault("measure", {})
    out["measure"].setdefault("classical", False)  # the same baseline row every trial: not refit per trial
    if any(o.split == "validation" and o.metric in QUALITY_METRICS for o in search.objectives):
        out["measure"]["validation"] = True
    out.setdefault("run", {})
    if workers > 1:  # share the cores, and keep several progress bars from fighting over the terminal
        out["run"].setdefault("threads", max(1, (os.cpu_count() or 1) // workers))
        out["run"]["progress"] = False
    return out


def check_space(raw: dict, search: SearchSpec) -> None:
    """Every searched key must exist and accept its range's ends (and every choice): found before trial 1."""
    own = [k for k in search.space if k.split(".")[0] == "search"]
    if own:
        raise RecipeError(f"search.space.{own[0]}", "the search cannot tune its own settings", "remove the key")
    for key, p in search.space.items():
        values = p.choices if p.type == "categorical" else [p.low, p.high]
        if p.type == "int":
            values = [int(v) for v in values]
        for value in values:
            try:
                parse_recipe(set_path(base_of(raw), key, value))
            except RecipeError as e:
                problem = e.problem if e.key in ("", key) else f"{e.key}: {e.problem}"
                raise RecipeError(f"search.space.{key}", f"value {value!r} does not fit the recipe ({problem})",
                                  e.fix or "check the key path and the range") from None


def recipe_digest(raw: dict) -> str:
    text = yaml.safe_dump(base_of(raw), sort_keys=True) + json.dumps(raw["search"]["space"] if raw.get("search")
                                                                       else {}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ optuna
