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
    # shapes padded back with zeros, int8 weights dequantized, LoRA merged)
    format: Literal["onnx", "hf"] = "onnx"
    # onnx only: int8 = onnxruntime's dynamic quantization (int8 weights per channel, activations quantized per call)
    quantize: Literal["none", "int8"] = "none"
    # onnx only: onnxruntime's transformer graph fusions (attention, LayerNorm, GELU) before quantizing, for the model
    # families it knows (BERT); other families are exported unfused
    optimize: bool = True
    opset: int = Field(18, ge=17, le=23)  # ONNX opset of the exported graph
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # hf only: the weights' dtype in the folder
    # the largest |logit| difference from trainopt's model on the test inputs that counts as the same model; an
    # export over it fails the stage (int8 exports are compared by predictions instead: see the method card)
    tolerance: float = Field(1e-3, gt=0.0)

    @model_validator(mode="after")
    def _format_keys(self):
        onnx_only = {"quantize", "optimize", "opset"} & self.model_fields_set
        if self.format != "onnx" and onnx_only:
            raise ValueError(f"{', '.join(sorted(onnx_only))} apply to format: onnx; remove them for format: hf")
        if self.format != "hf" and "dtype" in self.model_fields_set:
            raise ValueError("dtype applies to format: hf (an onnx export is float32, int8 with quantize: int8)")
        return self
