"""Quality budgets: how much a compression stage may lose against the baseline stage.

With `budget:` (the recipe's, or a stage's own), every stage that compresses (its outcome is not `unchanged`) is
evaluated on the validation split, like the baseline, and compared with it before its result is written: a stage
over budget is flagged in red on the terminal and in the report, and `on_over_budget: fail` stops the chain after
writing it. Validation, not test: the budget steers the chain, and steering by the test split would leak it.

With no budget, a stage whose *test* quality fell more than 1 pt below the baseline's (1% for perplexity) is still
flagged: a chain never destroys a model silently."""

from __future__ import annotations

from .errors import TrainoptError
from .evaluate import default_metric

FLAG_DROP = 0.01  # without a budget: a larger loss of test quality against the baseline is flagged
RELATIVE = ("loss", "perplexity")  # lower is better; their drop is a relative increase


class OverBudget(TrainoptError):
    """A stage lost more than its budget allows and the budget says `on_over_budget: fail`."""

    exit_code = 1


def spec_for(stage, recipe):
    return getattr(stage, "budget", None) or recipe.budget


def any_budget(recipe) -> bool:
    return recipe.budget is not None or any(getattr(s, "budget", None) for s in recipe.stages)


def metric_for(spec, task: str, train_labels) -> str:
    """The budget's metric: as written, or auto (macro-F1 on imbalanced classes, else accuracy; LM: perplexity)."""
    if spec.metric != "auto":
        return spec.metric
    return default_metric(task, train_labels) if task == "classification" else "perplexity"


def drop_of(metric: str, reference: float, value: float) -> float:
    """How much worse `value` is than `reference`: points for accuracy/macro-F1, a relative increase otherwise."""
    return value / reference - 1.0 if metric in RELATIVE else reference - value


def judge(result, stage, outcome, previous: list, recipe, train_labels) -> dict | None:
    """The stage's budget entry (also put in result.details["budget"]) and its red flags (result notes); None where
    no budget applies. A stage over budget has entry["over"] True."""
    baseline = next((r for r in previous if r.effect == "baseline"), None)
    if baseline is None or outcome.effect == "unchanged":
        return None
    notes = result.details.setdefault("notes", [])
    spec = spec_for(stage, recipe)
    flag = _test_flag(result, baseline, recipe.task, spec is not None)
    if flag:
        notes.append(flag)
    if spec is None:
        return None
    metric = metric_for(spec, recipe.task, train_labels)
    ref, value = (baseline.validation_quality or {}).get(metric), (result.validation_quality or {}).get(metric)
    entry = {"metric": metric, "split": "validation", "reference_stage": baseline.name, "reference": ref,
             "value": value, "max_drop": spec.max_drop, "on_over_budget": spec.on_over_budget}
    if ref is None or value is None:
        entry.update(drop=None, over=None)
        notes.append(f"the budget could not be checked: no validation {metric} (give the data a validation split)")
    else:
        drop = drop_of(metric, ref, value)
        entry.update(drop=round(drop, 5), over=drop > spec.max_drop + 1e-9)
        if entry["over"]:
            notes.append(f"OVER BUDGET: validation {metric} {value} against {ref} of {baseline.name}, "
                         f"{_spell(metric, drop)} lost, budget {_spell(metric, spec.max_drop)}")
    result.details["budget"] = entry
    if not notes:
        result.details.pop("notes")
    return entry


def _test_flag(result, baseline, task: str, budgeted: bool) -> str | None:
    """A flag for a stage that lost more than FLAG_DROP of test quality against the baseline, budget or not."""
    metrics = ("accuracy", "f1_macro") if task == "classification" else ("perplexity",)
    lost = []
    for m in metrics:
        ref, value = baseline.quality.get(m), result.quality.get(m)
        if ref is not None and value is not None and drop_of(m, ref, value) > FLAG_DROP + 1e-9:
            lost.append(f"{m} {value} against {ref}, {_spell(m, drop_of(m, ref, value))} lost")
    if not lost:
        return None
    why = ("the budget is judged on the validation split, which did not show it: a small validation split (or one "
           "with few examples of a class) resolves macro-F1 coarsely — enlarge data.validation_fraction"
           if budgeted else "set `budget:` to gate the chain on it")
    return f"QUALITY LOST against {baseline.name} on the test split: " + "; ".join(lost) + f" (more than 1 pt; {why})"


def _spell(metric: str, drop: float) -> str:
    return f"{drop:.1%}" if metric in RELATIVE else f"{drop * 100:.1f} pt"
