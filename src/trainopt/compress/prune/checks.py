"""Before any work: what a prune stage's settings cannot do, from the recipe alone (`check`) and on the model's class
and shapes, built on the meta device from its config (`check_model`, called by validate.check_model)."""

from __future__ import annotations

import torch

from ...errors import RecipeError
from ...specbase import stage_key
from .masks import check_pattern, targets
from .spec import PruneStage


def check(stage: PruneStage, index: int, recipe, device: torch.device) -> None:
    heads = stage.method == "structured" and stage.structured is not None and stage.structured.heads
    if heads and stage.distill is not None and stage.distill.attention:
        raise RecipeError(stage_key(index, "distill.attention"), "pruned heads have no teacher head to match",
                          "set distill.attention: 0 (or structured.heads: 0)")


def check_model(stage: PruneStage, index: int, model, shapes_kept: bool) -> None:
    """The architecture structured pruning needs; the modules left to prune; 2:4's input widths (while no earlier
    stage changed the shapes)."""
    if stage.method == "structured":
        from .structured import check_architecture

        check_architecture(model, stage, index)
        return
    modules = targets(model, stage, index)
    if shapes_kept:
        check_pattern(modules, stage.pattern, index)
