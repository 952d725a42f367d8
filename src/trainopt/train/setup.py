"""Model-side setup before the first step: the attention kernel, activation checkpointing, fp8 matmuls."""

from __future__ import annotations

from ..errors import RecipeError
from . import fa4  # noqa: F401 — registers `attention: fa4` into train/attention.py
from .attention import switch
from .monitor import console


def accelerate(model, stage) -> dict | None:
    """The model-side acceleration switches: the attention kernel, activation checkpointing and fp8 matmuls (what
    fp8 converted, or None)."""
    switch(model, stage)
    if stage.activation_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise RecipeError(f"stages.{stage.name}.activation_checkpointing",
                              f"{type(model).__name__} does not support activation checkpointing", "set it to false")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if stage.fp8 == "off":
        return None
    from . import fp8

    why = fp8.why_unsupported(next(model.parameters()).device)
    if why:
        raise RecipeError(f"stages.{stage.name}.fp8", why, "set fp8: off")
    info = fp8.enable(model, stage.fp8)
    if not info["fp8_linears"]:
        fp8.disable(model)
        raise RecipeError(f"stages.{stage.name}.fp8", "no Linear of this model qualifies (widths must be multiples "
                          "of 16; the output head stays in high precision)", "set fp8: off")
    console.print(f"fp8 ({stage.fp8}): {info['fp8_linears']} Linears")
    return info
