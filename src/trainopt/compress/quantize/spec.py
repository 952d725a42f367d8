"""Recipe schema of the `quantize` stage (docs/methods/quantize.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ...specbase import NAME, Doc, StageBase, Strict
from ...train.spec import TrainSettings


class SmoothSpec(Strict):
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    """the migration strength α: per input channel the scale max|X|^α / max|W|^(1−α) moves from the activations into
    the weights"""
    calibration_batches: int = Field(8, ge=1)
    """batches of 4 training blocks used to measure the activation ranges"""


class QuantizeStage(StageBase):
    """Quantize the model of the previous stage (or of `from_stage`). See [methods/quantize.md](methods/quantize.md)."""

    kind: Literal["quantize"]
    name: str = Field("quantize", pattern=NAME)
    """stage name"""
    method: Literal["dynamic_int8", "weight_only_int8", "weight_only_int4"] = "dynamic_int8"
    """dynamic int8: int8 weights per output channel, activations quantized on the fly, PyTorch's x86 kernels (CPU
    inference). `weight_only_int8` (torchao) and `weight_only_int4` (PyTorch's int4 kernel, CPU and CUDA): integer
    weights, floating-point activations; a tied LM head shares the int8 embedding ([method
    card](methods/quantize.md))"""
    group_size: Literal[32, 64, 128, 256] = 128
    """`weight_only_int4`: input channels per int4 scale group (Linears whose width it does not divide stay bf16)"""
    int4_qparams: Literal["minmax", "hqq"] = "minmax"
    """int4 groups (`weight_only_int4`, and `dynamic_int8`'s `embedding_bits: 4`): each group's scale and zero from
    its min and max, or by HQQ's error-minimising solver (torchao's; same kernel and bytes)"""
    embeddings: bool = True
    """also store vocabulary-sized embeddings in 8 bits per row (weight-only)"""
    embedding_bits: Literal[8, 4] = 8
    """`weight_only_int4` and `dynamic_int8`: vocabulary embeddings in int8 per row, or int4 in groups of
    `embedding_group_size` along the hidden axis (half the bytes of the matrix that is most of a small encoder's
    size; weight_only_int4: a head tied to them too; dynamic_int8: a tied LM head keeps its own int8 copy)"""
    embedding_group_size: Literal[16, 32, 64, 128] = 32
    """`embedding_bits: 4`: hidden channels per int4 scale group"""
    skip: list[str] = []
    """module-name substrings to keep in float (e.g. `classifier`)"""
    smooth: SmoothSpec | None = None
    """SmoothQuant-style smoothing before converting (Llama-family decoders; null: none): activation outliers moved into
    the weights per input channel, folded into the preceding norm / up / value projection so the float model is
    unchanged"""
    qat: Annotated[TrainSettings | None, Doc(type="train settings or null", expand=False)] = None
    """quantization-aware training first: the keys of a `train` stage (epochs, optimizer, schedule, precision,
    eval_every, …) for a fine-tune with fake quantization of exactly what the conversion quantizes (`smooth` and `qat`:
    `dynamic_int8` only)"""

    @model_validator(mode="after")
    def _dynamic_only(self):
        if self.method != "dynamic_int8" and (self.smooth is not None or self.qat is not None):
            raise ValueError("smooth and qat apply to method: dynamic_int8; remove them for weight-only methods")
        int4 = self.method == "weight_only_int4" or (self.method == "dynamic_int8" and self.embedding_bits == 4)
        if not int4 and self.int4_qparams != "minmax":
            raise ValueError("int4_qparams applies to int4 groups (method: weight_only_int4, or dynamic_int8 with "
                             "embedding_bits: 4); remove it here")
        if self.method == "weight_only_int8" and self.embedding_bits != 8:
            raise ValueError("embedding_bits: 4 applies to methods weight_only_int4 and dynamic_int8; remove it for "
                             "weight_only_int8")
        return self


    def trainings(self):
        return [("qat", self.qat)] if self.qat is not None else []

    def weaker(self, trial, info: dict) -> QuantizeStage:
        """Which parts stay float, drawn by an Optuna trial (budget_search.py): the embeddings, the output head, and
        the first and last blocks (a count of each; the rest is quantised as written)."""
        n = info["num_layers"]
        first = trial.suggest_int("float_first_blocks", 0, n)
        last = trial.suggest_int("float_last_blocks", 0, n - first)
        embeddings = self.embeddings and trial.suggest_categorical("quantize_embeddings", [True, False])
        head = trial.suggest_categorical("float_head", [False, True])
        blocks = [f"{info['block_prefix']}.{i}." for i in list(range(first)) + list(range(n - last, n))]
        skip = list(self.skip) + blocks + (list(info["head"]) if head else [])
        return self.model_copy(update={"skip": skip, "embeddings": embeddings})
