"""The small base every recipe schema builds on: strict models, stage names, the built-in asset names and the one
helper that spells an error's key. It imports only pydantic, so a technique's `spec.py` can import it without
pulling in torch or any other technique (and `trainopt check` stays light)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

BUILTIN_MODELS = ("builtin:minilm-l6", "builtin:smollm2-135m")
BUILTIN_DATA = ("builtin:fine_foods", "builtin:austen", "builtin:definitions")
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"  # also a file name: at most 100 characters
INT_MAX = 2**31 - 1  # the largest integer any key takes: seeds, thread counts, steps and sizes all fit below it


@dataclass(frozen=True)
class Doc:
    """How a field reads in docs/recipe.md where its annotation alone would say too little (used as
    `Annotated[<type>, Doc(...)]`): its type or default column in words, or `expand=False` for a nested block whose
    keys are documented elsewhere (recipe/reference.py renders the tables; a field's meaning is its docstring)."""

    type: str | None = None
    default: str | None = None
    expand: bool = True


class Strict(BaseModel):
    """Unknown keys are errors; floats are finite (no .inf / .nan); integers, also inside lists and mappings, stay
    within ±INT_MAX (a 10**23 seed or thread count is refused here, not by an OverflowError mid-run). The docstring
    under each field is its meaning in docs/recipe.md, generated from these classes (`make docs`; read from the
    source by recipe/reference.py only then, so parsing a recipe pays nothing for it)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _bounded_integers(cls, value):
        _check_integers(value, 0)
        return value


def _check_integers(value, depth: int) -> None:
    if isinstance(value, bool) or depth > 20:
        return
    if isinstance(value, int):
        if abs(value) > INT_MAX:
            raise ValueError(f"{str(value)[:20]}{'…' if len(str(value)) > 20 else ''} is too large; integers here "
                             f"are at most {INT_MAX}")
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_integers(v, depth + 1)
    elif isinstance(value, dict):
        for v in value.values():
            _check_integers(v, depth + 1)


class BudgetSpec(Strict):
    """A quality budget (budget.py): how much a compression stage may lose against the baseline stage (the fine-tuned
    model), measured on the validation split before the stage's result is written."""

    max_drop: float = Field(0.01, ge=0.0, le=1.0)
    """the largest allowed loss: points of accuracy / macro-F1 (0.01 = 1 pt), or a relative increase of perplexity /
    loss (0.01 = 1%)"""
    metric: Literal["auto", "accuracy", "f1_macro", "loss", "perplexity"] = "auto"
    """auto: macro-F1 when the training classes are imbalanced (largest ≥ 1.5x smallest), else accuracy; perplexity for
    LMs"""
    on_over_budget: Literal["warn", "fail", "search"] = "warn"
    """warn: flag the stage (✗ in the table, red on the terminal, `budget.over` in report.json) and go on; fail: write
    its result and the report, then stop the chain (exit status 1; `--resume` stops there again); search: run the stage
    again with weaker settings drawn by Optuna (multi-objective TPE: validation quality × latency × non-zero weight
    bytes) and keep the fastest that fits (see below)"""
    trials: int = Field(8, ge=1, le=200)
    """search: settings tried; each re-runs the stage from its input model"""


class StageBase(Strict):
    name: str = Field("stage", pattern=NAME)
    from_stage: str | None = None
    """start from this earlier stage's model instead of the previous stage's"""
    budget: BudgetSpec | None = None
    """this stage's own quality budget (replaces the recipe's `budget:`)"""

    def paths(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(key under the stage, path or builtin name, the builtins allowed there) for every path this stage
        reads: checked before any work starts (recipe/paths.py)."""
        return []

    def trainings(self) -> list[tuple[str, object]]:
        """(key under the stage, TrainSettings) of every training this stage runs (checked together)."""
        return []


def stage_key(index: int, *parts: str) -> str:
    """The key an error names for a stage setting: `stages.<index>.<key>` (the one spelling every error uses)."""
    return ".".join(["stages", str(index), *[p for p in parts if p]])
