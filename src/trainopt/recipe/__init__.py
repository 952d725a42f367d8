"""The recipe: one typed object, parsed once, validated before any work starts.

  schema.py   the Recipe (model, data, run, measure, the stage union from trainopt/techniques.py, search)
  load.py     YAML loading, built-in recipes, `--set` overrides, dump
  errors.py   pydantic's errors as one line naming the key and the fix
  paths.py    missing files and unknown built-ins, before any work starts
Every technique's own keys live in its folder's spec.py; docs/recipe.md is generated from the field descriptions
(`python -m trainopt.recipe.docs`).
"""

from ..compress.distill.spec import DistillLossSpec, DistillStage, StudentSpec
from ..compress.prune.spec import GradualSpec, PruneStage, StructuredSpec
from ..compress.quantize.spec import QuantizeStage, SmoothSpec
from ..data.augment.spec import AugmentStage, BackTranslateSpec, ContextualSpec, EdaSpec
from ..eval.spec import EvalStage
from ..specbase import BUILTIN_DATA, BUILTIN_MODELS, StageBase, Strict
from ..train.spec import (EarlyStoppingSpec, OptimizerSpec, ProfileSpec, RecoverySpec, ScheduleSpec, TrainSettings,
                          TrainStage)
from ..tune.spec import QUALITY_METRICS, ObjectiveSpec, ParamSpec, PrunerSpec, SearchSpec
from .load import (RECIPES_DIR, apply_overrides, builtin_recipe_names, dump_recipe, is_builtin, load_recipe,
                   parse_recipe, read_yaml, resolve_recipe_path, set_path)
from .paths import check_paths
from .schema import CleanSpec, DataSpec, MeasureSpec, ModelSpec, Recipe, RunSpec, Stage, TokenizerTrainSpec

__all__ = ["AugmentStage", "BackTranslateSpec", "BUILTIN_DATA", "BUILTIN_MODELS", "CleanSpec", "ContextualSpec",
           "DataSpec", "DistillLossSpec", "DistillStage", "EarlyStoppingSpec", "EdaSpec", "EvalStage", "GradualSpec",
           "MeasureSpec", "ModelSpec", "ObjectiveSpec", "OptimizerSpec", "ParamSpec", "ProfileSpec", "PrunerSpec",
           "PruneStage", "QUALITY_METRICS", "QuantizeStage", "RECIPES_DIR", "Recipe", "RecoverySpec", "RunSpec",
           "ScheduleSpec", "SearchSpec", "SmoothSpec", "Stage", "StageBase", "Strict", "StructuredSpec",
           "StudentSpec", "TokenizerTrainSpec", "TrainSettings", "TrainStage", "apply_overrides",
           "builtin_recipe_names", "check_paths", "dump_recipe", "is_builtin", "load_recipe", "parse_recipe",
           "read_yaml", "resolve_recipe_path", "set_path"]
