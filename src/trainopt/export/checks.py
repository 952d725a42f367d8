"""Before any work: what an export cannot do with the recipe's chain or this machine."""

from __future__ import annotations

import importlib.util

from ..errors import RecipeError
from ..specbase import stage_key
from .spec import ExportStage


def check(stage: ExportStage, index: int, recipe, device) -> None:
    """onnxruntime present for format onnx; a saved folder to export (a stage before it, or model.path); no ONNX
    export of a stage that quantized in trainopt's own int8/int4 formats (torch.onnx cannot trace them)."""
    if stage.format == "onnx":
        missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise RecipeError(stage_key(index, "format"), f"format onnx needs {', '.join(missing)}, not installed",
                              "pip install onnx onnxruntime onnxscript (or use format: hf)")
    parent = _exported(stage, index, recipe)
    if parent is None and recipe.model.path is None:
        raise RecipeError(stage_key(index, "kind"), "an export as the first stage needs a model folder (model.path)",
                          "put the export after a stage, or load the model from model.path")
    if stage.format == "onnx" and parent is not None and parent.kind == "quantize":
        raise RecipeError(stage_key(index, "format"), f"stage {parent.name} quantized the model in trainopt's own "
                          "format, which torch.onnx cannot export",
                          "export the stage before it with quantize: int8 (onnxruntime's int8), or use format: hf")


def _exported(stage: ExportStage, index: int, recipe):
    """The stage whose model this export writes (None: the recipe's model)."""
    if stage.from_stage is not None:
        return recipe.stage(stage.from_stage)
    earlier = [s for s in recipe.stages[:index] if s.kind not in ("export", "augment")]
    return earlier[-1] if earlier else None
