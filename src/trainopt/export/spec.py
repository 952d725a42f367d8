"""Recipe schema of the `export` stage (docs/methods/export.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..specbase import NAME, StageBase


class ExportStage(StageBase):
    """Write the previous stage's model (or `from_stage`'s) in another runtime's format, check that it computes what
    trainopt's model computes, and measure it in that runtime (quality on the test split, latency, size). The chain
    goes on from the exported stage's model: a stage after an export starts where the export started."""

    kind: Literal["export"]
    name: str = Field("export", pattern=NAME)
    # onnx: a torch.onnx (dynamo) graph run by onnxruntime; hf: a plain transformers folder (no trainopt code: pruned
    # shapes padded back with zeros, int8 weights dequantized, LoRA merged); gguf: one llama.cpp file (Llama-family
    # causal LMs), run by llama.cpp where llama-cpp-python is installed, else read back by transformers' GGUF loader
    format: Literal["onnx", "hf", "gguf"] = "onnx"
    # onnx: int8 = onnxruntime's dynamic quantization (int8 weights per channel, activations quantized per call);
    # gguf: q4_0 / q8_0 (ggml blocks of 32; the embedding in q8_0), q4_k_m (llama.cpp's own quantizer: needs
    # llama-cpp-python, `make llama-cpp`) or f16; none = float32
    quantize: Literal["none", "int8", "q4_0", "q4_k_m", "q8_0", "f16"] = "none"
    # onnx, float exports: onnxruntime's transformer graph fusions (LayerNorm + residual, GELU) for the families it
    # knows (BERT), kept when the fused graph matches; int8 exports quantize the unfused graph (measured faster)
    optimize: bool = True
    opset: int = Field(18, ge=17, le=23)  # ONNX opset of the exported graph
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # hf only: the weights' dtype in the folder
    # the largest |logit| difference from trainopt's model on the test inputs that counts as the same model; an
    # export over it fails the stage (int8 exports are compared by predictions instead: see the method card)
    tolerance: float = Field(1e-3, gt=0.0)

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
