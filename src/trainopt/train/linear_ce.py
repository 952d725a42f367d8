"""Linear + cross-entropy for causal-LM heads without the full logits tensor (`lm_loss: chunked | liger`).

A causal LM's head multiplies every position's hidden state by the vocabulary matrix: for GPT-2 at micro-batch 16
× 1024 tokens that is a 16k × 50k logits tensor (1.6 GB in bf16, 3.3 GB once upcast to fp32 for the loss), written,
read back by the softmax, and kept for the backward. Here the loss is computed a chunk of positions at a time and the
gradients of the hidden states and of the head's weight are produced in the same pass (Liger-style), so no chunk's
logits outlive their chunk and no matmul is repeated in the backward.

- `chunked`: the PyTorch implementation below (any device, CPU included). Hand-written because PyTorch has no fused
  linear + cross-entropy; it is ~40 lines of matmuls, and its loss and gradients are tested equal to the plain ones.
- `liger`: Liger-Kernel's Triton `LigerFusedLinearCrossEntropyLoss` (CUDA; `pip install liger-kernel`).

train/loss.py's `TrainLoss` calls these in place of the model's head when a stage sets `lm_loss`.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK = 4096  # positions per chunk: 4096 × 50k fp32 logits = 0.8 GB transient at GPT-2's vocabulary


class _ChunkedLinearCE(torch.autograd.Function):
    """Summed cross-entropy of (x @ weight.T + bias) against targets, chunk by chunk; gradients computed in the
    forward (softmax − one-hot per chunk) and only scaled in the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, chunk: int, ignore_index: int, want_grad: bool,
                vocab_multiple: int = 1):
        need = ctx.needs_input_grad if want_grad else (False, False, False)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        dev = x.device.type  # matmuls in the autocast dtype when autocast is on (as the plain head would run)
        cd = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.promote_types(x.dtype,
                                                                                                       weight.dtype)
        vocab = weight.shape[0]
        pad = (-vocab) % vocab_multiple
        if pad:  # zero rows up to an aligned width (e.g. GPT-2's 50,257 → 50,304): the logits' row stride and the
            # backward's inner dimension become multiples of 64, which matmul kernels prefer; the extra logits are
            # set to −inf below, so the loss and gradients are those of the real vocabulary
            weight = torch.nn.functional.pad(weight.to(cd), (0, 0, 0, pad))
            bias = None if bias is None else torch.nn.functional.pad(bias, (0, pad))
        grad_x = torch.empty_like(x) if need[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need[1] else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if bias is not None and need[2] \
            else None
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        functional = torch.compiler.is_compiling()
        for start in range(0, x.shape[0], chunk):
            xs, ts = x[start:start + chunk], targets[start:start + chunk]
            logits = xs @ weight.t()
            if bias is not None:
                logits = logits + bias
            valid = ts != ignore_index
            safe = torch.where(valid, ts, torch.zeros_like(ts))
            logits, lse, g = _chunk_grad(logits, safe, valid, vocab, functional)
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            total = total + torch.where(valid, lse - picked, torch.zeros_like(lse)).sum()
            if grad_x is None and grad_w is None and grad_b is None:
                continue
            gm = g.to(cd)
            if grad_x is not None:
                grad_x[start:start + chunk] = gm @ weight.to(cd)
            if grad_w is not None:
                grad_w += (gm.t() @ xs.to(cd)).float()
            if grad_b is not None:
                grad_b += g.sum(0)
        if pad:  # the padding rows' gradients are zero: drop them
            grad_w = None if grad_w is None else grad_w[:vocab]
            grad_b = None if grad_b is None else grad_b[:vocab]
        ctx.save_for_backward(grad_x, grad_w, grad_b)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grads = tuple(None if g is None else (g * grad_out.to(g.dtype)).to(dt)
                      for g, dt in zip(ctx.saved_tensors, ctx.dtypes))
        return (*grads, None, None, None, None, None)


def _chunk_grad(logits: torch.Tensor, safe: torch.Tensor, valid: torch.Tensor, vocab: int, functional: bool):
    """One chunk's fp32 logits (columns ≥ `vocab` are padding: −inf), log-sum-exp per row, and d(loss)/d(logits) =
    softmax − one-hot (0 on ignored rows). Two forms of the same numbers: `functional` (under torch.compile) has no
    in-place writes, so inductor fuses the upcast, the padding mask, the exponent, the one-hot (an index compare)
    and the row mask into the kernels around the log-sum-exp reduction and no fp32 gradient is materialised (the
    in-place form cost a separate ~0.4 ms pass per 4,096-row chunk at GPT-2's vocabulary on an H100); eager keeps
    the in-place form, which allocates fewer chunk-sized temporaries."""
    z = logits.float()
    if functional:
        cols = torch.arange(z.shape[1], device=z.device)
        if vocab < z.shape[1]:
            z = z.masked_fill(cols >= vocab, float("-inf"))
        lse = torch.logsumexp(z, dim=-1)
        onehot = (cols[None, :] == safe[:, None]).to(z.dtype)
        return z, lse, (torch.exp(z - lse[:, None]) - onehot) * valid[:, None]
    if vocab < z.shape[1]:
        z[:, vocab:] = float("-inf")
    lse = torch.logsumexp(z, dim=-1)
    g = torch.exp(z - lse[:, None])
    g.scatter_add_(1, safe[:, None], -torch.ones_like(lse)[:, None])
    return z, lse, g * valid[:, None]


def chunked_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                 targets: torch.Tensor, chunk: int = DEFAULT_CHUNK,
                                 ignore_index: int = -100, vocab_multiple: int = 1) -> torch.Tensor:
    """Σ cross_entropy(x @ weight.T + bias, targets) over the rows of x (N × H) whose target ≠ ignore_index.
    `vocab_multiple` > 1: the matmuls run on the vocabulary zero-padded to a multiple of it (same result)."""
    want_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return _ChunkedLinearCE.apply(x, weight, bias, targets, chunk, ignore_index, want_grad, vocab_multiple)


@torch.compiler.disable  # Liger's Triton kernels run as they are; dynamo cannot trace their addmm(out_dtype=…) calls
def liger_linear_cross_entropy(x, weight, bias, targets, ignore_index: int = -100) -> torch.Tensor:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    out = LigerFusedLinearCrossEntropyLoss(ignore_index=ignore_index, reduction="sum")(weight, x, targets, bias)
    return out[0] if isinstance(out, tuple) else out


def check_supported(model, kind: str, device: torch.device) -> str | None:
    """Why `lm_loss: kind` cannot run for this model here (None when it can)."""
    if model.get_output_embeddings() is None:
        return f"{type(model).__name__} has no output embedding (LM head) to fuse"
    cfg = model.config
    for key in ("final_logit_softcapping", "logit_scale", "output_mult"):
        if getattr(cfg, key, None):
            return f"the model transforms its logits ({key}), which the fused loss does not reproduce"
    if kind == "liger":
        if device.type != "cuda":
            return "Liger's Triton kernel needs a CUDA device"
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            return "liger-kernel is not installed (pip install liger-kernel)"
    return None
