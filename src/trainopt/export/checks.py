"""Before any work: what an export cannot do with the recipe's chain or this machine."""

from __future__ import annotations

import importlib.util

from ..errors import RecipeError
from ..specbase import stage_key
from .spec import ExportStage


def check(stage: ExportStage, index: int, recipe, device) -> None:
    """onnxruntime present for format onnx; GGUF for causal LMs only; a saved folder to export (a stage before it, or
    model.path); no ONNX or GGUF export of a stage that quantized in trainopt's own int8/int4 formats (torch.onnx
    cannot trace them, GGUF has no such types), no GGUF of per-layer pruned shapes."""
    if stage.format == "onnx":
        missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise RecipeError(stage_key(index, "format"), f"format onnx needs {', '.join(missing)}, not installed",
                              "pip install onnx onnxruntime onnxscript (or use format: hf)")
    if stage.quantize == "q4_k_m" and importlib.util.find_spec("llama_cpp") is None:
        raise RecipeError(stage_key(index, "quantize"), "q4_k_m is made by llama.cpp's own quantizer, and "
                          "llama-cpp-python is not installed", "run `make llama-cpp`, or use quantize: q4_0 or q8_0")
    if stage.format == "gguf" and recipe.task != "causal_lm":
        raise RecipeError(stage_key(index, "format"), "GGUF holds causal language models (llama.cpp)",
                          "use format: onnx or hf for a classifier")
    parent = _exported(stage, index, recipe)
    if parent is None and recipe.model.path is None:
        raise RecipeError(stage_key(index, "kind"), "an export as the first stage needs a model folder (model.path)",
                          "put the export after a stage, or load the model from model.path")
    if stage.format != "hf" and parent is not None and parent.kind == "quantize":
        raise RecipeError(stage_key(index, "format"), f"stage {parent.name} quantized the model in trainopt's own "
                          f"format, which {stage.format} cannot hold",
                          "export the stage before it with the format's own quantize:, or use format: hf")
    if stage.format == "gguf" and parent is not None and parent.kind == "prune" and parent.method == "structured":
        raise RecipeError(stage_key(index, "format"), f"stage {parent.name} gave layers different shapes, which "
                          "GGUF cannot describe", "export the stage before it")


def check_model(stage: ExportStage, index: int, model, shapes_kept: bool) -> None:
    """GGUF: the model is a Llama-family decoder llama.cpp's `llama` architecture runs (checked on the recipe's model
    class; a chain that changes the architecture is checked again when the stage runs)."""
    if stage.format == "gguf":
        from .gguf import supports

        problem = supports(model.config)
        if problem:
            raise RecipeError(stage_key(index, "format"), problem, "use format: onnx or hf")


def _exported(stage: ExportStage, index: int, recipe):
    """The stage whose model this export writes (None: the recipe's model)."""
    if stage.from_stage is not None:
        return recipe.stage(stage.from_stage)
    earlier = [s for s in recipe.stages[:index] if s.kind not in ("export", "augment")]
    return earlier[-1] if earlier else None
