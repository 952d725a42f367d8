"""The `attention` and `sdpa_backend` keys; `attention: sdpa_causal` — PyTorch's scaled_dot_product_attention told
`is_causal=True` instead of handed a mask.

transformers builds an explicit (batch, 1, seq, seq) mask for SDPA whenever it cannot prove the batch is unpadded,
and under `torch.compile` before torch 2.14 it never can (dynamo answered `torch.compiler.is_exporting()` with True;
transformers' masking_utils says so). With a mask tensor SDPA's kernels compute every block of the score matrix and
read the mask, instead of skipping the half above the diagonal: on GPT-2 124M's training shape on an H200, SDPA handed
the mask ran at 0.44x the speed of cuDNN's kernel told `is_causal` (RESULTS.md, benchmarks/attention_kernels_gpu.py).

Here the model's attention layers call a function that decides from the shapes alone, which needs no tracing of
values: no padding mask and as many queries as keys → `is_causal=True`, no mask tensor; one query (decoding with a
cache) → no mask; anything else (a padding mask, a longer cache) → the exact boolean mask, causal from the bottom
right like transformers'. The mask side registers FlashAttention's convention (transformers' `flash_attention_mask`:
None for an unpadded batch, else the 2D padding mask), so no 4D mask is built for the common case. Same model class,
weights and state dict; hand-written because no library has this dispatch (transformers has it from torch 2.14 on).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

SDPA_KEY = "trainopt_sdpa_causal"


def explicit_mask(q_len: int, kv_len: int, padding: torch.Tensor | None, causal: bool, device) -> torch.Tensor:
    """The boolean mask (batch or 1, 1, q_len, kv_len): True = attend. Causal rows are aligned bottom-right (the last
    query sees every key), as transformers' masks with a cache; `padding` is the 2D (batch, kv_len) mask."""
    mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if causal:
        mask = mask.tril(kv_len - q_len)
    mask = mask[None, None]
    if padding is not None:
        mask = mask & padding[:, -kv_len:].bool()[:, None, None, :]
    return mask


UNSUPPORTED = ("sliding_window", "softcap", "s_aux")  # per-call attention variants these functions do not implement


def refuse_variants(name: str, kwargs: dict) -> None:
    """A model that asks its attention function for a sliding window, logit soft-capping or sink logits gets an
    error naming it, not silently plain causal attention."""
    for k in UNSUPPORTED:
        if kwargs.get(k) is not None:
            raise ValueError(f"attention: {name} does not implement {k}, which this model uses (use attention: sdpa)")


def sdpa_causal_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: query/key/value (B, H, S, D) → output (B, S, H, D), no weights."""
    refuse_variants("sdpa_causal", kwargs)
    causal = bool(getattr(module, "is_causal", True))
    q_len, kv_len = query.shape[2], key.shape[2]
    mask, is_causal = None, False
    if attention_mask is None and (q_len == kv_len or not causal):
        is_causal = causal  # the fast path: no mask tensor, the kernel skips the blocks above the diagonal
    elif attention_mask is not None or q_len > 1:
        mask = explicit_mask(q_len, kv_len, attention_mask, causal, query.device)
    gqa = {"enable_gqa": True} if key.shape[1] != query.shape[1] else {}
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                         is_causal=is_causal, **gqa)
    return out.transpose(1, 2).contiguous(), None


def register_masks(key: str) -> None:
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionMaskInterface.register(key, flash_attention_mask)


def register_sdpa_causal() -> str:
    """Make `trainopt_sdpa_causal` a transformers attention implementation (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(SDPA_KEY, sdpa_causal_forward)
    register_masks(SDPA_KEY)
    return SDPA_KEY


def attention_dropout(config) -> float:
    """The attention-probability dropout a transformers config sets, whatever its architecture calls it."""
    return max((getattr(config, k, 0.0) or 0.0)
               for k in ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout"))


def _prepare_sdpa_causal(model, key: str) -> str:
    return register_sdpa_causal()


# attention kernels of trainopt's own: name → (prepare(model, error key) -> implementation name, what to call it in
# an error). train/fa4.py adds `fa4` when imported (train/setup.py imports it), so this module never imports it.
KERNELS = {"sdpa_causal": (_prepare_sdpa_causal, "sdpa_causal (transformers' AttentionInterface)")}


def switch(model, stage) -> None:
    """The `attention` and `sdpa_backend` keys: point the model's attention layers at the chosen implementation
    (`auto` leaves the one it loaded with). What the recipe check could not see before the model loaded is refused
    here, with the reason."""
    from ..errors import RecipeError

    key = stage.key_of("attention")
    if stage.attention in KERNELS:
        prepare, what = KERNELS[stage.attention]
        impl = prepare(model, key)
    else:
        impl, what = stage.attention, stage.attention
    if impl != "auto":
        try:
            model.set_attn_implementation(impl)
        except (ImportError, ValueError) as e:
            raise RecipeError(key, f"this model cannot run {what} here ({str(e).splitlines()[0][:120]})",
                              "use attention: sdpa (or eager)") from None
    if stage.sdpa_backend != "auto":
        _check_sdpa_backend(model, stage)


SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                 "math": "MATH"}


def sdpa_context(backend: str):
    """The `sdpa_backend` switch: restrict scaled_dot_product_attention to one kernel while the forward runs (and is
    traced, when compiled; its backward follows the forward's kernel). `auto` leaves PyTorch's own choice."""
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[backend])])


def _check_sdpa_backend(model, stage) -> None:
    """What the recipe check cannot see before the model is loaded: the attention it actually runs, its dropout."""
    from ..errors import RecipeError
    from .monitor import console

    key = stage.key_of("sdpa_backend")
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in ("sdpa", SDPA_KEY):
        raise RecipeError(key, f"this model runs {impl or 'its own'} attention, not PyTorch's "
                          "scaled_dot_product_attention", "set attention: sdpa (or remove sdpa_backend)")
    if next(model.parameters()).device.type != "cpu":
        return
    if stage.compile:
        console.print(f"[yellow]sdpa_backend: {stage.sdpa_backend} has no effect when compiled on a CPU (inductor "
                      "lowers attention itself)[/yellow]")
    dropout = attention_dropout(model.config)
    if stage.sdpa_backend == "flash" and dropout > 0:
        raise RecipeError(key, f"PyTorch's CPU flash attention kernel has no dropout and this model's attention "
                          f"dropout is {dropout}", "set model.dropout: 0 (or sdpa_backend: auto)")
