"""int4 primitives shared by both quantization paths: torchao's tinygemm quantizers (w ≈ (q − 8)·scale + zero per
group), two values per byte, and `Int4Embedding` — a vocabulary embedding in int4 groups along the hidden axis, used
by `weight_only_int4` and by `dynamic_int8` with `embedding_bits: 4` (weight_only.py, dynamic.py). It imports no
other quantization module, so both can import it."""

from __future__ import annotations

import torch


def quantize_int4(w: torch.Tensor, group_size: int, qparams: str = "minmax"):
    """int4 values q (0..15, int32, [n, k]) and per-group scale and zero ([n, k / group_size] each, bf16) of a 2-D
    weight, groups along its second axis, in tinygemm's convention w ≈ (q − 8)·scale + zero. `qparams`: each group's
    scale and zero from its min and max ("minmax"), or chosen by HQQ's half-quadratic solver, which moves them to cut
    the rounding error of the group's weights ("hqq"). Both are torchao's."""
    from torchao.quantization.quant_primitives import (
        MappingType,
        _choose_qparams_affine_tinygemm,
        _choose_qparams_and_quantize_affine_hqq,
        _quantize_affine_tinygemm,
    )

    n, k = w.shape
    block = (1, group_size)
    if qparams == "hqq":  # raw_output=False: scale and zero already in tinygemm's convention (as torchao uses it)
        q, scale, zero, _ = _choose_qparams_and_quantize_affine_hqq(
            w, nbits=4, group_size=group_size, axis=1, compute_dtype=torch.bfloat16, device=w.device, raw_output=False)
        q = q.reshape(n, k).to(torch.int32)
    else:
        scale, zero = _choose_qparams_affine_tinygemm(w, MappingType.ASYMMETRIC, block, torch.int32, 0, 15, 1e-6,
                                                      torch.bfloat16, torch.bfloat16)
        q = _quantize_affine_tinygemm(w, block, scale, zero, torch.int32, 0, 15)
    return q, scale.reshape(n, -1).to(torch.bfloat16), zero.reshape(n, -1).to(torch.bfloat16)


def nibbles(q: torch.Tensor) -> torch.Tensor:
    """int4 values [n, k] → two per byte, the first in the high nibble ([n, k / 2] uint8)."""
    q = q.to(torch.int32)
    return (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)


def unnibble(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `nibbles` (any leading shape): [..., k / 2] uint8 → [..., k] int32 in 0..15."""
    p = packed.to(torch.int32)
    return torch.stack([p >> 4, p & 15], dim=-1).flatten(-2)


def dequantize_int4(q: torch.Tensor, scale_and_zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """(q − 8)·scale + zero in bf16: q [..., k] (0..15), scale_and_zero [..., k / group_size, 2] → [..., k]."""
    groups = q.to(torch.bfloat16).unflatten(-1, (-1, group_size))
    return ((groups - 8) * scale_and_zero[..., 0:1] + scale_and_zero[..., 1:2]).flatten(-2)


class Int4Embedding(torch.nn.Module):
    """A vocabulary embedding in int4: groups of `group_size` along the hidden axis, w ≈ (q − 8)·scale + zero (the
    same convention and quantizers as Int4Linear), stored as plain nibbles [rows, dim / 2] + bf16 scales and zeros
    [rows, dim / group_size, 2]. A lookup gathers its rows and dequantizes them (any device). Written here because
    torchao's int4 embedding (`IntxWeightOnlyConfig`) keeps one int4 value per byte, which saves nothing over int8."""

    def __init__(self, num_embeddings: int, embedding_dim: int, group_size: int, padding_idx: int | None,
                 device: torch.device):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.group_size = num_embeddings, embedding_dim, group_size
        self.padding_idx = padding_idx
        self.register_buffer("qweight", torch.zeros(num_embeddings, embedding_dim // 2, dtype=torch.uint8,
                                                    device=device))
        self.register_buffer("scale_and_zero", torch.zeros(num_embeddings, embedding_dim // group_size, 2,
                                                           dtype=torch.bfloat16, device=device))

    @staticmethod
    def supports(emb: torch.nn.Embedding, group_size: int) -> bool:
        return emb.embedding_dim % group_size == 0  # group sizes are even: whole bytes per row

    @classmethod
    def from_embedding(cls, emb: torch.nn.Embedding, group_size: int, qparams: str = "minmax") -> Int4Embedding:
        w = emb.weight.detach()
        q, scale, zero = quantize_int4(w, group_size, qparams)
        layer = cls(emb.num_embeddings, emb.embedding_dim, group_size, emb.padding_idx, w.device)
        layer.qweight = nibbles(q).to(w.device)
        layer.scale_and_zero = torch.stack([scale, zero], dim=-1).to(w.device)
        return layer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return dequantize_int4(unnibble(self.qweight[ids]), self.scale_and_zero[ids], self.group_size)

    def dequantize(self) -> torch.Tensor:
        """The whole matrix in bf16 (for a tied LM head: a transient, not kept)."""
        return dequantize_int4(unnibble(self.qweight), self.scale_and_zero, self.group_size)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int4 group_size={self.group_size}"
