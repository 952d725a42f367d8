"""Before any work: what a distill stage's settings cannot do, from the recipe alone."""

from __future__ import annotations

import torch

from ...errors import RecipeError
from ...specbase import stage_key
from .spec import DistillStage


def check(stage: DistillStage, index: int, recipe, device: torch.device) -> None:
    """An attention-map loss needs the same heads in student and teacher: refused when a structured prune that removes
    heads runs between the teacher stage and this one (a teacher folder is compared once both models are loaded)."""
    if not stage.loss.attention or stage.teacher_stage is None:
        return
    start = recipe.stage_index(stage.teacher_stage)
    for earlier in recipe.stages[start + 1: index]:
        structured = getattr(earlier, "structured", None)
        if earlier.kind == "prune" and earlier.method == "structured" and structured is not None and structured.heads:
            raise RecipeError(stage_key(index, "loss.attention"), f"stage {earlier.name} prunes attention heads after "
                              f"the teacher stage {stage.teacher_stage}, so student and teacher heads differ",
                              "set loss.attention: 0 (or structured.heads: 0 there)")
