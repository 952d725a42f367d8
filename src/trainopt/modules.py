"""Module-tree surgery shared by the techniques that swap layers (quantization, fp8, 2:4 kernels, pruning)."""

from __future__ import annotations

import torch


def set_module(block: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    """Replace the submodule at a dotted path (relative to `block`)."""
    parent, _, attr = path.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, attr, module)


