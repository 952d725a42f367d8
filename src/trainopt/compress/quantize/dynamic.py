"""Quantization through PyTorch (`torch.ao.quantization`): dynamic int8 for CPU inference, with optional
quantization-aware training (QAT) before the conversion.

- dynamic_int8: every nn.Linear gets int8 weights (per output channel, symmetric) and quantizes its input on
  the fly (per tensor) — PyTorch's x86/oneDNN/fbgemm dynamic kernels. Vocabulary-sized embeddings get 8-bit
  weights per row (weight-only), or with `embedding_bits: 4` int4 in groups along the hidden axis (int4.py's
  Int4Embedding: a lookup dequantizes its rows; half the bytes of the matrix that dominates a small encoder's size).
  Small embeddings (positions, token types) stay float: the quantized embedding kernel needs contiguous indices,
  which HF passes for input ids only.
- QAT: before converting, fine-tune with fake quantization of exactly what the conversion will quantize
  (weights per channel, activations per tensor from the batch's own range), straight-through gradients.
- Smoothing (Llama-family decoders): SmoothQuant-style per-channel scales moved from the activations into the
  weights before converting, so that activation outliers stop ruining the per-tensor activation scale.

Saved form (`trainopt.json` → "quantization"): config.json + model.safetensors holding, for each quantized
module, its integer weights and their scales/zero points (an Int4Embedding: its packed nibbles and bf16 scales and
zeros, as its own buffers); every other tensor as float. Plain `transformers`
cannot load it; `trainopt.artifacts.load_saved` (so `trainopt eval/predict`) rebuilds the model from its config,
applies the same quantization and loads the stored integers: the reloaded model is bit-identical.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.ao.nn.quantized import Embedding as QEmbedding
from torch.ao.nn.quantized.dynamic import Linear as QDynLinear
from torch.ao.quantization import float_qparams_weight_only_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

from ...errors import RecipeError
from ...modules import set_module
from .int4 import Int4Embedding

MIN_EMBEDDING_ROWS = 1000  # quantize vocabulary embeddings, not position/type tables
ACT_QMAX = 127  # activation range of the x86 dynamic int8 Linear (reduce_range=True)


def plan(model: torch.nn.Module, stage_embeddings: bool, skip: list[str], embedding_bits: int = 8,
         embedding_group_size: int = 32, embedding_qparams: str = "minmax") -> dict:
    """Names of the modules to quantize: {"linear": [...], "embedding": [...] (8-bit rows)} and, with
    `embedding_bits` 4, "embedding4": [...] (int4 groups; an embedding whose width the group does not divide stays
    8-bit) with its "embedding4_group_size" and "embedding4_qparams" (min/max or HQQ's scales)."""
    linear, embedding, embedding4 = [], [], []
    for name, module in model.named_modules():
        if any(s and s in name for s in skip):
            continue
        if isinstance(module, torch.nn.Linear):
            linear.append(name)
        elif stage_embeddings and isinstance(module, torch.nn.Embedding) and \
                module.num_embeddings >= MIN_EMBEDDING_ROWS:
            four = embedding_bits == 4 and Int4Embedding.supports(module, embedding_group_size)
            (embedding4 if four else embedding).append(name)
    out = {"linear": linear, "embedding": embedding}
    if embedding_bits == 4:
        out.update(embedding4=embedding4, embedding4_group_size=embedding_group_size,
                   embedding4_qparams=embedding_qparams)
    return out


def convert(model: torch.nn.Module, modules: dict, empty_int4: bool = False) -> torch.nn.Module:
    """Dynamic int8 conversion of the planned modules (in place), on CPU; int4 embeddings swapped in after
    (`empty_int4`: as zeros, for a saved model whose integers are loaded next)."""
    model.cpu().eval()
    spec = {name: per_channel_dynamic_qconfig for name in modules["linear"]}
    spec.update({name: float_qparams_weight_only_qconfig for name in modules["embedding"]})
    # Tied input/output embeddings: the conversion gives each module its own quantized copy.
    with _quiet():
        model = quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    for name in modules.get("embedding4", []):
        emb, group = model.get_submodule(name), modules["embedding4_group_size"]
        set_module(model, name, Int4Embedding(emb.num_embeddings, emb.embedding_dim, group, emb.padding_idx,
                                              emb.weight.device) if empty_int4 else
                   Int4Embedding.from_embedding(emb, group, modules.get("embedding4_qparams", "minmax")))
    return model


@contextmanager
def _quiet():
    """PyTorch 2.13 warns that quantized-tensor constructors are deprecated in favour of torchao; they are
    what its fast x86 dynamic int8 kernels (fbgemm/oneDNN) take, and they still work."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*deprecated.*")
        yield


# ------------------------------------------------------------------------------------------- smoothing
# SmoothQuant (Xiao et al. 2023): per input channel j, divide the activation by s_j and multiply the weight
# column by s_j, s_j = max|X_j|^α / max|W_:,j|^(1-α), so that outlier channels stop dominating the per-tensor
# activation scale. The division is folded into whatever produces X (an RMSNorm weight, the up projection's
# rows, the value projection's rows), so the float model computes the same function. Written here because
# torch.ao's dynamic int8 path has no smoothing and torchao's targets its own quantized tensors.
SMOOTHABLE = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo2")


@torch.no_grad()
def input_absmax(model, batches, names: list[str]) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| of the named Linear layers over calibration batches."""
    stats: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        def hook(module, args, output, name=name):
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
            stats[name] = torch.maximum(stats[name], x) if name in stats else x
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        for batch in batches:
            model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return stats


def _scales(x_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    w_max = torch.cat([w.abs() for w in weights], 0).amax(0).float().clamp(min=1e-5)
    return (x_max.clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def smooth(model, batches, alpha: float) -> int:
    """Fold SmoothQuant scales into a Llama-family decoder, in place; returns the number of smoothed Linears."""
    from ..blocks import find_blocks

    cfg = model.config
    if cfg.model_type not in SMOOTHABLE:
        raise RecipeError("stages.smooth", f"smoothing knows Llama-family decoders ({', '.join(SMOOTHABLE)}), "
                          f"not {cfg.model_type}", "remove smooth: from the quantize stage")
    _, attr, blocks = find_blocks(model)
    prefix = next(n for n, m in model.named_modules() if m is blocks)
    names = [f"{prefix}.{i}.{m}" for i in range(len(blocks))
             for m in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")]
    stats = input_absmax(model, batches, names)
    heads, kv_heads = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    for i, block in enumerate(blocks):
        att, mlp = block.self_attn, block.mlp
        # 1. attention input: the input norm feeds q, k, v
        s = _scales(stats[f"{prefix}.{i}.self_attn.q_proj"], [att.q_proj.weight, att.k_proj.weight,
                                                              att.v_proj.weight], alpha)
        block.input_layernorm.weight.div_(s)
        for lin in (att.q_proj, att.k_proj, att.v_proj):
            lin.weight.mul_(s)
        # 2. MLP input: the post-attention norm feeds gate and up
        s = _scales(stats[f"{prefix}.{i}.mlp.gate_proj"], [mlp.gate_proj.weight, mlp.up_proj.weight], alpha)
        block.post_attention_layernorm.weight.div_(s)
        for lin in (mlp.gate_proj, mlp.up_proj):
            lin.weight.mul_(s)
        # 3. down projection input = SiLU(gate)·up: scale up's output rows
        s = _scales(stats[f"{prefix}.{i}.mlp.down_proj"], [mlp.down_proj.weight], alpha)
        mlp.up_proj.weight.div_(s[:, None])
        if mlp.up_proj.bias is not None:
            mlp.up_proj.bias.div_(s)
        mlp.down_proj.weight.mul_(s)
        # 4. output projection input = attention-weighted values: scale v's rows; with grouped KV heads one
        # value channel serves several query heads, so they share one scale (the max over the group)
        s = _scales(stats[f"{prefix}.{i}.self_attn.o_proj"], [att.o_proj.weight], alpha)
        s_kv = s.view(kv_heads, heads // kv_heads, head_dim).amax(1)  # [kv_heads, head_dim]
        att.v_proj.weight.div_(s_kv.reshape(-1)[:, None])
        if att.v_proj.bias is not None:
            att.v_proj.bias.div_(s_kv.reshape(-1))
        att.o_proj.weight.mul_(s_kv[:, None, :].expand(kv_heads, heads // kv_heads, head_dim).reshape(-1))
    return 7 * len(blocks)


# ------------------------------------------------------------------------------------------------- QAT
class FakeQuantLinear(torch.nn.Module):
    """A Linear seen through the int8 dynamic kernel's rounding, with straight-through gradients.

    Written here because the PyTorch QAT flow (prepare_qat) inserts static activation observers, while the
    dynamic kernel quantizes each input from its own range; torch.fake_quantize_* does the rounding."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.linear.weight
        # weights: per output channel, symmetric, qint8 (what per_channel_dynamic_qconfig's observer computes)
        w_scale = (w.detach().abs().amax(dim=1) / 127.5).clamp(min=1e-8).float()
        w_zero = torch.zeros_like(w_scale, dtype=torch.int32)
        wq = torch.fake_quantize_per_channel_affine(w, w_scale, w_zero, 0, -128, 127)
        # activations: per tensor, affine, from this batch's range, on 7 bits: the dynamic int8 Linear calls
        # quantized.linear_dynamic with reduce_range=True (0..127) to avoid overflow in its int16 accumulation
        lo = torch.clamp(x.detach().min(), max=0.0).float()
        hi = torch.clamp(x.detach().max(), min=0.0).float()
        a_scale = ((hi - lo) / ACT_QMAX).clamp(min=1e-8)
        a_zero = torch.round(-lo / a_scale).clamp(0, ACT_QMAX).int()
        xq = torch.fake_quantize_per_tensor_affine(x.float(), a_scale, a_zero, 0, ACT_QMAX).to(x.dtype)
        return F.linear(xq, wq.to(x.dtype), self.linear.bias)


def insert_fake_quant(model: torch.nn.Module, linear_names: list[str]) -> None:
    for name in linear_names:
        set_module(model, name, FakeQuantLinear(model.get_submodule(name)))


def remove_fake_quant(model: torch.nn.Module, linear_names: list[str]) -> None:
    for name in linear_names:
        set_module(model, name, model.get_submodule(name).linear)


# ----------------------------------------------------------------------------------------- save / load
def quantized_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The dequantized weights and biases held by quantized modules (they are not nn.Parameters)."""
    out = []
    for m in model.modules():
        if isinstance(m, QDynLinear):
            w, b = m._weight_bias()
            out.append(w.dequantize())
            if b is not None:
                out.append(b.detach())
        elif isinstance(m, QEmbedding):
            out.append(m.weight().dequantize())
    return out


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether the model holds PyTorch's dynamic int8 modules (an Int4Embedding alone is weight-only int4's)."""
    return any(isinstance(m, (QDynLinear, QEmbedding)) for m in model.modules())


def export_tensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """Integer weights + qparams of quantized modules, float tensors for the rest (tied tensors once)."""
    tensors: dict[str, torch.Tensor] = {}
    modules = {"linear": [], "embedding": []}
    quantized_prefixes = []
    for name, m in model.named_modules():
        if isinstance(m, QDynLinear):
            w, b = m._weight_bias()
            tensors[f"{name}.weight.int8"] = w.int_repr().contiguous()
            tensors[f"{name}.weight.scale"] = w.q_per_channel_scales().float().contiguous()
            tensors[f"{name}.weight.zero_point"] = w.q_per_channel_zero_points().to(torch.int32).contiguous()
            if b is not None:
                tensors[f"{name}.bias"] = b.detach().contiguous()
            modules["linear"].append(name)
            quantized_prefixes.append(name + ".")
        elif isinstance(m, Int4Embedding):  # its packed buffers are saved below, as plain tensors
            modules.setdefault("embedding4", []).append(name)
            modules["embedding4_group_size"] = m.group_size
        elif isinstance(m, QEmbedding):
            w = m.weight()
            tensors[f"{name}.weight.uint8"] = w.int_repr().contiguous()
            tensors[f"{name}.weight.scale"] = w.q_per_channel_scales().float().contiguous()
            tensors[f"{name}.weight.zero_point"] = w.q_per_channel_zero_points().float().contiguous()
            modules["embedding"].append(name)
            quantized_prefixes.append(name + ".")
    tied: dict[str, str] = {}
    seen: dict[int, str] = {}
    for key, value in model.state_dict().items():
        if any(key.startswith(p) for p in quantized_prefixes) or not isinstance(value, torch.Tensor):
            continue
        ptr = value.data_ptr()
        if ptr in seen:
            tied[key] = seen[ptr]
            continue
        seen[ptr] = key
        tensors[key] = value.detach().contiguous()
    return tensors, {"modules": modules, "tied": tied}


def import_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], info: dict) -> torch.nn.Module:
    """Rebuild a model saved by export_tensors: quantize the same modules, then load the stored integers."""
    modules = info["modules"]
    convert(model, modules, empty_int4=True)
    with _quiet():
        _load_integers(model, tensors, modules)
    quantized = tuple(n + "." for n in modules["linear"] + modules["embedding"])
    plain = {k: v for k, v in tensors.items() if not k.startswith(quantized)}
    for alias, source in info.get("tied", {}).items():
        plain[alias] = plain[source]
    # Copy float tensors one by one: load_state_dict would ask the quantized modules for keys of their own.
    expected = {k for k, v in model.state_dict().items() if isinstance(v, torch.Tensor) and not k.startswith(quantized)}
    if expected != set(plain):
        raise RuntimeError(f"quantized checkpoint does not match its config: missing {sorted(expected - set(plain))[:3]}, "
                           f"unexpected {sorted(set(plain) - expected)[:3]}")
    with torch.no_grad():
        for key, value in plain.items():
            module_name, _, attr = key.rpartition(".")
            getattr(model.get_submodule(module_name) if module_name else model, attr).copy_(value)
    return model.eval()


def _load_integers(model: torch.nn.Module, tensors: dict[str, torch.Tensor], modules: dict) -> None:
    for name in modules["linear"]:
        q = torch._make_per_channel_quantized_tensor(tensors[f"{name}.weight.int8"],
                                                      tensors[f"{name}.weight.scale"].double(),
                                                      tensors[f"{name}.weight.zero_point"].long(), 0)
        model.get_submodule(name).set_weight_bias(q, tensors.get(f"{name}.bias"))
    for name in modules["embedding"]:
        q = torch._make_per_channel_quantized_tensor(tensors[f"{name}.weight.uint8"],
                                                      tensors[f"{name}.weight.scale"],
                                                      tensors[f"{name}.weight.zero_point"], 0)
        model.get_submodule(name).set_weight(q)
