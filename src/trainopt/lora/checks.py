"""Before any work: what a lora stage cannot do, from the recipe alone."""

from __future__ import annotations

import torch

from ..errors import RecipeError
from ..specbase import stage_key
from .spec import LoraStage


def check(stage: LoraStage, index: int, recipe, device: torch.device) -> None:
    try:
        import peft  # noqa: F401
    except ImportError:
        raise RecipeError(stage_key(index, "kind"), "the lora stage needs the peft package",
                          "pip install peft (make install does)") from None
    if stage.quantize_base != "none":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise RecipeError(stage_key(index, "quantize_base"), "a 4-bit base needs the bitsandbytes package",
                              "pip install bitsandbytes (make install does), or set quantize_base: none") from None
        if stage.fp8 != "off":
            raise RecipeError(stage_key(index, "fp8"), "fp8 matmuls and a 4-bit base both replace the Linear layers",
                              "set fp8: off, or quantize_base: none")
    if stage.parallel == "fsdp":
        raise RecipeError(stage_key(index, "parallel"), "LoRA trains with parallel: ddp only for now (FSDP2 shards "
                          "frozen and trained weights alike; not built yet)", "set parallel: ddp")
    if not stage.merge:
        for j, later in enumerate(recipe.stages[index + 1:], index + 1):
            parent = later.from_stage or recipe.stages[j - 1].name
            if parent == stage.name and later.kind != "eval":
                raise RecipeError(stage_key(index, "merge"), f"stage {later.name} ({later.kind}) starts from this "
                                  "stage's model, which is an adapter on its base", "set merge: true")
