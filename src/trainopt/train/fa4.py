"""`attention: fa4` — FlashAttention-4's CuTe kernels (the `flash-attn-4` package) inside a transformers model.

Liger-style: the model class, its weights and state dict stay the same; only the function its attention layers call
changes. transformers dispatches attention through `AttentionInterface`, so the kernel is registered there under
`trainopt_fa4` (with FlashAttention's mask convention: no mask for unpadded causal batches) and the model is switched
with `set_attn_implementation`. transformers' own `flash_attention_4` path calls FA4's autograd Function, which
`torch.compile` cannot trace (a graph break in every layer); here the forward and backward kernels are two
`torch.library` custom ops with shape-only fake implementations, so the compiled graph holds attention as one opaque
node per layer, like SDPA's. Hand-written because no library exposes FA4 to transformers this way.

Scope, checked before work starts and at the first call: Hopper or Blackwell GPUs (FA4's kernels), fp16/bf16
activations, self-attention without a padding mask and without attention dropout (FA4 has neither).
"""

from __future__ import annotations

import importlib.util

import torch

from ..errors import RecipeError
from . import attention

KEY = "trainopt_fa4"


class _Kernels:
    """The two FA4 entry points the ops call; a test swaps in a reference implementation (see tests/test_fa4.py)."""

    def fwd(self, q, k, v, scale: float, causal: bool):
        from flash_attn.cute.interface import _flash_attn_fwd

        if q.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"attention: fa4 takes fp16/bf16 activations, got {q.dtype} (set precision: bf16)")
        out, lse, *_ = _flash_attn_fwd(q, k, v, softmax_scale=scale, causal=causal, return_lse=True)
        return out, lse

    def bwd(self, q, k, v, out, dout, lse, scale: float, causal: bool):
        from flash_attn.cute.interface import _flash_attn_bwd

        dq, dk, dv = _flash_attn_bwd(q, k, v, out, dout, lse, scale, causal)[:3]
        return dq, dk, dv


kernels = _Kernels()


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@torch.library.custom_op("trainopt::fa4_fwd", mutates_args=())
def fa4_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
            causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v: (batch, seq, heads, head_dim); returns the output (same layout) and the log-sum-exp (B, H, S_q)."""
    out, lse = kernels.fwd(*map(_last_dim_contiguous, (q, k, v)), scale, causal)
    return out.contiguous(), lse.contiguous()  # the layouts the fake promises (FA4's own: no copy)


@fa4_fwd.register_fake
def _(q, k, v, scale, causal):
    b, s, h, _ = q.shape
    return q.new_empty((b, s, h, v.shape[-1])), q.new_empty((b, h, s), dtype=torch.float32)


@torch.library.custom_op("trainopt::fa4_bwd", mutates_args=())
def fa4_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, scale: float, causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v, out, dout = map(_last_dim_contiguous, (q, k, v, out, dout))
    return tuple(g.contiguous() for g in kernels.bwd(q, k, v, out, dout, lse, scale, causal))


@fa4_bwd.register_fake
def _(dout, q, k, v, out, lse, scale, causal):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output):
    q, k, v, scale, causal = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale, ctx.causal = scale, causal
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = fa4_bwd(dout, q, k, v, out, lse, ctx.scale, ctx.causal)
    return dq, dk, dv, None, None


fa4_fwd.register_autograd(_backward, setup_context=_setup)


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: query/key/value (B, H, S, D) → output (B, S, H, D), no weights."""
    attention.refuse_variants("fa4", kwargs)
    if attention_mask is not None:
        raise ValueError("attention: fa4 runs unpadded causal batches only; this batch came with a padding mask")
    if dropout:
        raise ValueError(f"attention: fa4 has no attention dropout (the model asks for {dropout})")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out, _ = fa4_fwd(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), float(scale),
                     bool(getattr(module, "is_causal", True)))
    return out, None


def register() -> str:
    """Make `trainopt_fa4` a transformers attention implementation (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(KEY, attention_forward)
    attention.register_masks(KEY)
    return KEY


def _prepare(model, key: str) -> str:
    dropout = attention.attention_dropout(model.config)
    if dropout > 0:
        raise RecipeError(key, f"FlashAttention-4 has no attention dropout and this model's is {dropout}",
                          "set model.dropout: 0 (or attention: sdpa)")
    return register()


attention.KERNELS["fa4"] = (_prepare, "FlashAttention-4")


def why_unavailable(device: torch.device) -> str | None:
    """Why FA4 cannot run here (None when it can): the package, a CUDA device, a Hopper/Blackwell GPU."""
    if importlib.util.find_spec("flash_attn") is None or importlib.util.find_spec("flash_attn.cute") is None:
        return "the flash-attn-4 package is not installed (pip install flash-attn-4)"
    if device.type != "cuda":
        return "FlashAttention-4 runs on CUDA GPUs only"
    major, _ = torch.cuda.get_device_capability(device)
    if major not in (9, 10, 11):
        return f"FlashAttention-4 needs a Hopper or Blackwell GPU (compute capability 9.x/10.x), this is {major}.x"
    return None
