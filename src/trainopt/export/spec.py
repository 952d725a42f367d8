"""Recipe schema of the `export` stage (docs/methods/export.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..specbase import NAME, StageBase


class ExportStage(StageBase):
    """Write a stage's model in another runtime's format, check it against trainopt's model on the run's timing inputs,
    and measure it *in that runtime* (test quality, latency, size) as a row of the report. The chain goes on from the
    stage it exported: a stage after an export starts where the export started. See
    [methods/export.md](methods/export.md); `trainopt export MODEL_DIR` does the same for one folder."""

    kind: Literal["export"]
    name: str = Field("export", pattern=NAME)
    """stage name"""
    format: Literal["onnx", "hf", "gguf"] = "onnx"
    """`onnx`: a `torch.onnx` (dynamo) graph run by onnxruntime on the CPU, the model's own shapes (a pruned model stays
    small); `hf`: a plain transformers folder (pruned shapes padded back with zeros, int8 dequantized, LoRA merged);
    `gguf`: one llama.cpp file (Llama-family causal LMs), run by llama.cpp where llama-cpp-python is installed (`make
    llama-cpp`), else read back by transformers' GGUF loader"""
    quantize: Literal["none", "int8", "q4_0", "q4_k_m", "q8_0", "f16"] = "none"
    """`onnx`: `int8` = onnxruntime's dynamic int8 (weights per output channel, activations per call); `gguf`: `q4_0` /
    `q8_0` (ggml blocks of 32; the embedding in q8_0), `q4_k_m` (llama.cpp's own quantizer: needs llama-cpp-python,
    `make llama-cpp`) or `f16`; `none`: float32"""
    optimize: bool = True
    """`onnx`, float exports: onnxruntime's transformer fusions (LayerNorm + residual, GELU) for BERT-family models,
    kept only if the fused graph matches the unfused one (an int8 export quantizes the unfused graph: measured
    faster)"""
    opset: int = Field(18, ge=17, le=23)
    """`onnx`: the graph's opset"""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """`hf`: the weights' dtype"""
    tolerance: float = Field(1e-3, gt=0.0)
    """largest |logit| difference from trainopt's model that counts as the same model (a float export over it fails the
    stage; int8 exports report their difference and agreement instead)"""

    @model_validator(mode="after")
    def _format_keys(self):
        # a key that does not apply is an error only when set to something else than its default: the resolved
        # recipe (recipe.yaml) writes every key
        defaults = {name: info.default for name, info in type(self).model_fields.items()}
        onnx_only = {k for k in ("optimize", "opset") if getattr(self, k) != defaults[k]}
        if self.format != "onnx" and onnx_only:
            raise ValueError(f"{', '.join(sorted(onnx_only))} apply to format: onnx; remove them for format: "
                             f"{self.format}")
        allowed = {"onnx": ("none", "int8"), "gguf": ("none", "q4_0", "q4_k_m", "q8_0", "f16"),
                   "hf": ("none",)}[self.format]
        if self.quantize not in allowed:
            raise ValueError(f"quantize {self.quantize} does not apply to format: {self.format} (use one of "
                             f"{', '.join(allowed)})")
        if self.format != "hf" and self.dtype != defaults["dtype"]:
            raise ValueError("dtype applies to format: hf (an onnx export is float32, int8 with quantize: int8)")
        return self
