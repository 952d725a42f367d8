"""2:4 semi-structured weights multiplied by cuSPARSELt through one direct operator call per Linear.

PyTorch's `to_sparse_semi_structured` wraps the compressed weight in a tensor subclass: every `F.linear` on it goes
through Python dispatch (and, in torch 2.13, a custom-op wrapper that may pad the input) before cuSPARSELt runs, and
`torch.compile` has to trace through the subclass — measured on an H200 (benchmarks/RESULTS.md), the compiled
subclass model was far slower than its hand-captured graph. `Sparse24Linear` keeps only what the kernel needs — the
compressed weight from `torch._cslt_compress`, the bias, and an algorithm id — and calls `torch._cslt_sparse_mm`
itself, computing (W · xᵀ)ᵀ with the transpose fused into the kernel (`transpose_result=True`). To the compiler it is
one aten operator (an extern kernel), so a compiled model replayed from CUDA graphs runs it with no host work at all
(eager, each call still costs ~0.5 ms of host work: 2:4 pays only under graphs). No library offers this as a module
(torchao's sparsify uses the same subclass), hence written here; the arithmetic is cuSPARSELt's.

CUDA only (cuSPARSELt); on a CPU the 2:4 model stays dense with its zeros (`masked`).
"""

from __future__ import annotations

import torch
from torch import nn

ROW_MULTIPLE = 16  # cuSPARSELt's smallest dense operand (bf16/fp16) wants rows in multiples of 16; inputs are padded


def available(device: torch.device) -> bool:
    """Whether this PyTorch build and device can run `Sparse24Linear` (CUDA with cuSPARSELt)."""
    return (device.type == "cuda" and hasattr(torch, "_cslt_compress")
            and bool(getattr(torch.backends, "cusparselt", None) and torch.backends.cusparselt.is_available()))


def _require_cuda(w: torch.Tensor) -> None:
    if w.device.type != "cuda":
        raise ValueError("Sparse24Linear runs on CUDA (cuSPARSELt); move the model to the GPU first")


class Sparse24Linear(nn.Module):
    """A frozen Linear with a 2:4 weight, run by cuSPARSELt (inference only: no gradient flows to the weight)."""

    def __init__(self, linear: nn.Linear, alg_id: int = 0):
        super().__init__()
        w = linear.weight.detach()
        _require_cuda(w)
        self.out_features, self.in_features = w.shape
        self.register_buffer("packed", torch._cslt_compress(w.contiguous()))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(w.dtype).contiguous())
        self.alg_id = int(alg_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        rows = x2.shape[0]
        pad = (-rows) % ROW_MULTIPLE
        if pad:
            x2 = torch.nn.functional.pad(x2, (0, 0, 0, pad))
        y = torch._cslt_sparse_mm(self.packed, x2.t(), self.bias, transpose_result=True, alg_id=self.alg_id)
        if pad:
            y = y[:rows]
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, alg_id={self.alg_id}"


def search_alg(layer: Sparse24Linear, rows: int) -> int:
    """cuSPARSELt's fastest algorithm for this layer at `rows` input rows, kept only if a trial call with it at that
    row count succeeds (torch 2.11 + cuSPARSELt 0.8 returned ids its own matmul then refused); else 0, the default."""
    x = torch.randn(rows, layer.in_features, dtype=layer.packed.dtype, device=layer.packed.device)
    try:
        alg = int(torch._cslt_sparse_mm_search(layer.packed, x.t(), layer.bias, transpose_result=True))
        torch._cslt_sparse_mm(layer.packed, x.t(), layer.bias, transpose_result=True, alg_id=alg)
        torch.cuda.synchronize(x.device)
    except (RuntimeError, TypeError):
        return 0
    return alg


def two_four_linears(model: nn.Module) -> set[str]:
    """Names of the Linears whose weights already hold the 2:4 pattern (at most 2 non-zeros in every 4 consecutive
    inputs) — what a `prune` stage with `pattern: 2:4` exports."""
    names = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and mod.in_features % 4 == 0:
            w = mod.weight.detach()
            if bool(((w.reshape(-1, 4) != 0).sum(-1) <= 2).all()):
                names.add(name)
    return names


def convert(model: nn.Module, names: set[str] | None = None, search_rows: int | None = None) -> dict:
    """Replace the named Linears of `model` (on CUDA, bf16/fp16, weights already 2:4; None: every Linear that holds
    the pattern) by `Sparse24Linear`s, in place. With `search_rows`, each layer takes cuSPARSELt's fastest algorithm
    at that many input rows. Returns counts and the first conversion errors (a layer cuSPARSELt refuses stays dense).

    To serve a 2:4 model at the speed its prune stage measured: load it, `.cuda().to(torch.bfloat16).eval()`,
    `convert(model, search_rows=<tokens per batch>)`, then `torch.compile(model, mode="reduce-overhead")`."""
    from ...modules import set_module

    if names is None:
        names = two_four_linears(model)

    converted, errors, algs = 0, [], {}
    for name, mod in list(model.named_modules()):
        if name not in names or not isinstance(mod, nn.Linear):
            continue
        try:
            layer = Sparse24Linear(mod)
            if search_rows:
                layer.alg_id = algs[name] = search_alg(layer, search_rows)
        except (RuntimeError, ValueError) as e:
            errors.append(f"{name}: {str(e).splitlines()[0][:120]}")
            continue
        set_module(model, name, layer)
        converted += 1
    return {"converted": converted, "errors": errors[:5],
            "non_default_algs": sum(a != 0 for a in algs.values()) if search_rows else None}
