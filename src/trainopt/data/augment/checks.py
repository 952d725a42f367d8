"""Before any work: an augment stage needs labelled data and the assets its operations read."""

from __future__ import annotations

from ... import assets
from ...errors import RecipeError
from ...specbase import stage_key


def check(stage, index: int, recipe, device) -> None:
    """Before any work: labelled data, and the assets the operations read."""
    if recipe.task != "classification":
        raise RecipeError(stage_key(index, "kind"), "augment applies to labelled (classification) data",
                          "remove the augment stage from a causal_lm recipe")
    if stage.per_example:
        assets.asset_path("wordnet")  # a missing asset fails here, before any work
    if stage.backtranslate is not None and stage.backtranslate.engine == "apertium":
        assets.asset_path("apertium")
    if stage.contextual is not None and not (stage.contextual.model or recipe.model.path):
        raise RecipeError(stage_key(index, "contextual.model"), "a model built from model.config has no "
                          "pretrained embeddings to take neighbours from", "name a local model folder")
