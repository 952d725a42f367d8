"""fp8 training matmuls through torchao (`fp8:` key of a training block).

torchao's `convert_to_float8_training` swaps `nn.Linear` modules for `Float8Linear`: the forward and both backward
matmuls run in fp8 (e4m3 inputs/weights, e5m2 gradients) with dynamic scales — per tensor (`tensorwise`) or per row
(`rowwise`, `rowwise_with_gw_hp` keeps the weight-gradient matmul in high precision). Weights and optimizer state
stay in their own dtype; only the matmul inputs are cast. On CUDA the fp8 kernels need compute capability 8.9+
(Ada, Hopper); PyTorch also runs them on the CPU (slowly: for tests and checks, not speed).

Two things here are ours, because no library does them for a transformers model:
- GPT-2's projections are `transformers.pytorch_utils.Conv1D` (a weight stored as (in, out)), which torchao does
  not swap. They become `nn.Linear` (weight transposed) for training and go back to `Conv1D` afterwards, so that the
  saved model has its own class and state dict.
- Mixed precision: torchao's `Float8Linear` does not support autocast (pytorch/ao#568): autocast's own cast of the
  matmul's arguments reaches the fp8 tensor and fails ("aten.to.dtype ... not supported"). `_Float8LinearAutocast`
  casts the input to the autocast dtype itself and runs the fp8 matmul with autocast off, so `precision: bf16`
  (autocast over fp32 master weights) and `fp8:` work together; under inference mode (evaluation) it runs in plain
  no-grad mode, where torchao's rowwise scales work.
- After training every `Float8Linear` goes back to a plain `nn.Linear` (same parameters): the trained model saves,
  quantizes and reloads like any other.

Left in high precision: the output head (the vocabulary projection or a classifier: small or precision-sensitive,
torchtitan leaves it out too) and any Linear whose widths are not multiples of 16 (fp8 kernels need them).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..modules import set_module

RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")


def why_unsupported(device: torch.device) -> str | None:
    """None where fp8 training runs here; else the reason."""
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        return "torchao is not installed (pip install torchao)"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available here"
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            return f"fp8 matmuls need compute capability 8.9+ (Ada/Hopper); this GPU is {major}.{minor}"
    return None


def eligible(model: nn.Module) -> list[str]:
    """The projections enable() converts: exactly nn.Linear, or GPT-2's Conv1D, both widths multiples of 16 (fp8
    GEMM tiles), output heads kept in high precision. Works on a meta-device model (the recipe check)."""
    heads = _head_ids(model)
    names = []
    for name, mod in model.named_modules():
        if id(mod) in heads:
            continue
        if type(mod) is nn.Linear:
            n_in, n_out = mod.in_features, mod.out_features
        elif type(mod).__name__ == "Conv1D":
            n_in, n_out = mod.weight.shape
        else:
            continue
        if n_in % 16 == 0 and n_out % 16 == 0:
            names.append(name)
    return names


def _head_ids(model: nn.Module) -> set[int]:
    heads = set()
    get = getattr(model, "get_output_embeddings", None)
    out = get() if callable(get) else None
    if out is not None:
        heads.add(id(out))
    for attr in ("classifier", "score", "qa_outputs"):
        mod = getattr(model, attr, None)
        if isinstance(mod, nn.Module):
            heads.update(id(m) for m in mod.modules())
    return heads


@functools.cache
def _autocast_class():
    from torchao.float8.float8_linear import Float8Linear

    class _Float8LinearAutocast(Float8Linear):
        """Float8Linear under autocast: input cast to the autocast dtype, fp8 matmul with autocast off."""

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            if not torch.compiler.is_compiling() and torch.is_inference_mode_enabled():  # (dynamo cannot trace it)
                # under inference mode torchao's fp8 tensor meets aten.reshape undecomposed, which rowwise scales do
                # not support: evaluate in plain no-grad mode (same result, nothing is saved for backward either way)
                with torch.inference_mode(False), torch.no_grad():
                    return self.forward(input)
            dev = input.device.type
            if not torch.is_autocast_enabled(dev):
                return super().forward(input)
            dtype = torch.get_autocast_dtype(dev)
            with torch.autocast(dev, enabled=False):
                return super().forward(input.to(dtype))

    return _Float8LinearAutocast


def enable(model: nn.Module, recipe: str) -> dict:
    """Swap the model's eligible projections for fp8 training, in place; returns what was converted."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from transformers.pytorch_utils import Conv1D

    conv = []
    for full, child in list(model.named_modules()):
        if isinstance(child, Conv1D):
            nx, nf = child.weight.shape
            lin = nn.Linear(nx, nf, bias=child.bias is not None, device=child.weight.device, dtype=child.weight.dtype)
            with torch.no_grad():
                lin.weight.copy_(child.weight.t())
                if child.bias is not None:
                    lin.bias.copy_(child.bias)
            set_module(model, full, lin)
            conv.append(full)
    heads = _head_ids(model)
    converted = []

    def keep(mod: nn.Module, fqn: str) -> bool:
        # exactly nn.Linear: not QAT's or int4's Linear subclasses
        ok = (type(mod) is nn.Linear and id(mod) not in heads and mod.in_features % 16 == 0
              and mod.out_features % 16 == 0)
        if ok:
            converted.append(fqn)
        return ok

    convert_to_float8_training(model, module_filter_fn=keep, config=Float8LinearConfig.from_recipe_name(recipe))
    cls = _autocast_class()
    for fqn in converted:  # same module, same parameters: only forward differs (see the module docstring)
        model.get_submodule(fqn).__class__ = cls
    model._trainopt_fp8_conv1d = set(conv)  # swapped back to Conv1D by disable() (torchao replaces the modules)
    return {"recipe": recipe, "fp8_linears": len(converted), "conv1d_swapped": len(conv)}


def disable(model: nn.Module) -> int:
    """Undo enable(): Float8Linear → nn.Linear, and the swapped Conv1D back; returns the modules restored."""
    from torchao.float8.float8_linear import Float8Linear
    from transformers.pytorch_utils import Conv1D

    restored, conv = 0, getattr(model, "_trainopt_fp8_conv1d", set())
    for full, child in list(model.named_modules()):
        if not isinstance(child, nn.Linear):
            continue
        was_conv = full in conv
        if not (was_conv or isinstance(child, Float8Linear)):
            continue
        w, b = child.weight, child.bias
        if was_conv:
            new = Conv1D(child.out_features, child.in_features)
            new.weight = nn.Parameter(w.detach().t().contiguous(), requires_grad=w.requires_grad)
        else:
            new = nn.Linear(child.in_features, child.out_features, bias=b is not None, device="meta")
            new.weight = w
        if b is not None:
            new.bias = b
        new.train(child.training)
        set_module(model, full, new)
        restored += 1
    if hasattr(model, "_trainopt_fp8_conv1d"):
        del model._trainopt_fp8_conv1d
    return restored
