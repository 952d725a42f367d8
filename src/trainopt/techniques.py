"""The technique table: every stage kind a recipe can name, its recipe schema and the module that runs it.

Adding a technique = one folder (its `spec.py`, its stage module with `run`, optionally a `checks.py`, its card in
docs/methods/) + one line here. The schema classes are imported (they need only pydantic, so parsing a recipe stays
light); the stage module is named, and imported by `stage_module()` only when a stage of that kind runs or is checked
against the machine — `trainopt check` and the `--nproc` launcher never import torch-heavy training code. The
architecture test reads these names as import edges, so they count against circles like any import.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .compress.distill.spec import DistillStage
from .compress.prune.spec import PruneStage
from .compress.quantize.spec import QuantizeStage
from .data.augment.spec import AugmentStage
from .eval.spec import EvalStage
from .export.spec import ExportStage
from .lora.spec import LoraStage
from .train.spec import TrainStage


@dataclass(frozen=True)
class Technique:
    spec: type  # the stage's recipe schema (a StageBase with `kind: Literal[...]`)
    stage: str  # the module with run(model, data, spec, ctx, stage_dir) -> (model, result)
    # a light module with check(spec, index, recipe, device) (what this machine lacks for it) and optionally
    # check_model(spec, index, model, shapes_kept) (what it cannot do to the recipe's model, on a meta-device copy)
    checks: str | None
    card: str  # its method card


TECHNIQUES: dict[str, Technique] = {
    "train": Technique(TrainStage, "trainopt.train.stage", None, "docs/methods/acceleration.md"),
    "lora": Technique(LoraStage, "trainopt.lora.stage", "trainopt.lora.checks", "docs/methods/lora.md"),
    "eval": Technique(EvalStage, "trainopt.eval.stage", None, "docs/recipe.md"),
    "quantize": Technique(QuantizeStage, "trainopt.compress.quantize.stage", "trainopt.compress.quantize.checks",
                          "docs/methods/quantize.md"),
    "distill": Technique(DistillStage, "trainopt.compress.distill.stage", "trainopt.compress.distill.checks",
                         "docs/methods/distill.md"),
    "prune": Technique(PruneStage, "trainopt.compress.prune.stage", "trainopt.compress.prune.checks",
                       "docs/methods/prune.md"),
    "augment": Technique(AugmentStage, "trainopt.data.augment.stage", "trainopt.data.augment.checks",
                         "docs/methods/augment.md"),
    "export": Technique(ExportStage, "trainopt.export.stage", "trainopt.export.checks", "docs/methods/export.md"),
}
# Every training a stage runs (its `trainings()`) is also checked by train/checks.py.


def stage_module(kind: str):
    """The module that runs stages of `kind` (imported on first use)."""
    return importlib.import_module(TECHNIQUES[kind].stage)


def checks_module(kind: str):
    """The module whose check(spec, index, recipe, device) runs before any work, or None."""
    name = TECHNIQUES[kind].checks
    return importlib.import_module(name) if name else None
