"""Weight-only int8 / int4 quantization through torchao (`method: weight_only_int8 | weight_only_int4`).

The weights are stored as integers with scales and dequantized inside the matmul; activations stay in floating point.
- weight_only_int8: every nn.Linear → torchao `Int8WeightOnlyConfig` (int8 per output channel); CPU and CUDA.
- weight_only_int4: every nn.Linear → torchao `Int4WeightOnlyConfig` (int4 in groups of `group_size` along the input,
  tinygemm's tile-packed layout, bf16 activations); CUDA only (torchao has no CPU int4 weight-only kernel).
- Vocabulary-sized embeddings (`embeddings: true`) → torchao `IntxWeightOnlyConfig` (int8 per row, or int4 in groups),
  so that a tied LM head's matrix is not the bulk of what stays in floating point.
Saved form: torchao's safetensors support (`flatten_tensor_state_dict`: the integer data, scales and zero points as
plain tensors + the tensor-subclass description in the safetensors metadata); `trainopt.models.load_saved` rebuilds
the model from its config, applies the same quantization and loads the stored integers (`unflatten_tensor_state_dict`,
no pickle). Plain `transformers` does not load this folder.
"""

from __future__ import annotations

import torch

from ..errors import RecipeError
from .quantize import MIN_EMBEDDING_ROWS

METHODS = ("weight_only_int8", "weight_only_int4")


def check(stage, index: int, device: torch.device) -> None:
    """A clear error before any work: torchao missing, or int4 without CUDA."""
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise RecipeError(f"stages.{index}.method", f"{stage.method} needs torchao, which is not installed",
                          "pip install torchao (or use method: dynamic_int8)") from None
    if stage.method == "weight_only_int4" and device.type != "cuda":
        raise RecipeError(f"stages.{index}.method", "int4 weight-only runs on CUDA (torchao's tinygemm kernel); "
                          "this run has no CUDA device", "use weight_only_int8 or dynamic_int8 on a CPU")


def _configs(method: str, group_size: int):
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if method == "weight_only_int8":
        return Int8WeightOnlyConfig(), IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    return (Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d"),
            IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size)))


def apply(model: torch.nn.Module, method: str, group_size: int, embeddings: bool, skip: list[str],
          device: torch.device) -> dict:
    """Quantize the model in place on `device`; returns what was quantized (saved in trainopt.json)."""
    from torchao.quantization import quantize_

    linear_cfg, embedding_cfg = _configs(method, group_size)
    model.to(device).eval()
    if method == "weight_only_int4":
        model.to(torch.bfloat16)  # tinygemm takes bf16 activations and scales

    def is_linear(m, fqn):
        return isinstance(m, torch.nn.Linear) and not any(s and s in fqn for s in skip) and \
            (method != "weight_only_int4" or m.in_features % group_size == 0)

    def is_embedding(m, fqn):
        return embeddings and isinstance(m, torch.nn.Embedding) and m.num_embeddings >= MIN_EMBEDDING_ROWS and \
            not any(s and s in fqn for s in skip)

    linear = [n for n, m in model.named_modules() if is_linear(m, n)]
    embedding = [n for n, m in model.named_modules() if is_embedding(m, n)]
    if embedding:
        quantize_(model, embedding_cfg, filter_fn=is_embedding)
    quantize_(model, linear_cfg, filter_fn=is_linear)
    return {"method": method, "format": "torchao", "group_size": group_size if method == "weight_only_int4" else None,
            "embeddings_quantized": bool(embedding), "skip": skip, "linear_modules": len(linear),
            "embedding_modules": embedding, "dtype": "bfloat16" if method == "weight_only_int4" else "float32"}


def is_quantized(model: torch.nn.Module) -> bool:
    return any(_is_ao(p) for p in model.parameters())


def _is_ao(t) -> bool:
    return type(t).__module__.startswith("torchao")


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the weights occupy in memory (integer data + scales for torchao tensors), tied tensors once."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        parts = [getattr(t, n) for n in getattr(t, "tensor_data_names", [])] if _is_ao(t) else [t]
        for p in parts:
            if isinstance(p, torch.Tensor) and p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
    return total


def dequantized(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor for counting (torchao tensors dequantize; others pass through)."""
    return t.dequantize() if _is_ao(t) and hasattr(t, "dequantize") else t


def save(model: torch.nn.Module, path) -> None:
    from safetensors.torch import save_file
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    state = {}
    seen: dict[int, str] = {}
    for k, v in model.state_dict().items():  # tied plain tensors once (e.g. an untouched tied embedding)
        if not _is_ao(v):
            if v.data_ptr() in seen:
                continue
            seen[v.data_ptr()] = k
        state[k] = v.detach().cpu() if not _is_ao(v) else v.cpu()
    tensors, metadata = flatten_tensor_state_dict(state)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={**metadata, "format": "pt"})


def load(model: torch.nn.Module, path, info: dict, device: torch.device) -> torch.nn.Module:
    """Rebuild a model saved by `save`: the same quantization on its config's weights, then the stored integers."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    if info["method"] == "weight_only_int4" and device.type != "cuda":
        from ..errors import TrainoptError

        raise TrainoptError(f"{path.parent} holds int4 weight-only weights, which run on CUDA only; load it on a GPU")
    apply(model, info["method"], info.get("group_size") or 128, info.get("embeddings_quantized", False),
          info.get("skip", []), device)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    state, _ = unflatten_tensor_state_dict(load_file(str(path), device=str(device)), metadata)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {k for k in missing if k.endswith("weight")} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"quantized checkpoint does not match its config: missing {sorted(set(missing) - tied)[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]}")
    if tied:
        model.tie_weights()
    return model.eval()
