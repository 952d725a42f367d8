"""Weight-only int8 / int4 quantization (`method: weight_only_int8 | weight_only_int4`).

The weights are stored as integers with scales and dequantized inside the matmul; activations stay in floating point.
- weight_only_int8: every nn.Linear → torchao `Int8WeightOnlyConfig` (int8 per output channel); CPU and CUDA.
- weight_only_int4: every nn.Linear → `Int4Linear` below: int4 in groups of `group_size` along the input
  (asymmetric, torchao's tinygemm quantization primitives), bf16 activations, PyTorch's own int4 matmul
  (`aten._weight_int4pack_mm`, the tinygemm kernel, on CUDA; its CPU counterpart on CPU).
- Vocabulary-sized embeddings (`embeddings: true`) → torchao `IntxWeightOnlyConfig` (int8 per row) for both methods,
  or, with `embedding_bits: 4` (weight_only_int4), `Int4Embedding` below (int4 in groups along the hidden axis).
  A tied LM head stays tied: it multiplies by the same int8 / int4 matrix (one copy in memory, as in the float model).
Saved form: torchao's safetensors support (`flatten_tensor_state_dict`: the integer data, scales and zero points as
plain tensors + the tensor-subclass description in the safetensors metadata); Int4Linear saves its int4 values two
per byte in plain row order (not the device's tile layout) with its bf16 scales and zeros. `trainopt.artifacts.load_saved`
rebuilds the model from its config, applies the same quantization and loads the stored integers
(`unflatten_tensor_state_dict`, no pickle). Plain `transformers` does not load this folder.
"""

from __future__ import annotations

import torch

from ...errors import RecipeError
from ...modules import set_module
from ...specbase import stage_key
from .dynamic import MIN_EMBEDDING_ROWS
from .int4 import Int4Embedding, dequantize_int4, nibbles, quantize_int4, unnibble

__all__ = ["Int4Embedding", "Int4Linear", "Int4TiedHead", "apply", "dequantize_int4", "nibbles", "quantize_int4",
           "unnibble"]

METHODS = ("weight_only_int8", "weight_only_int4")


def check(stage, index: int, device: torch.device) -> None:
    """A clear error before any work: torchao missing."""
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise RecipeError(stage_key(index, "method"), f"{stage.method} needs torchao, which is not installed",
                          "pip install torchao (or use method: dynamic_int8)") from None


class Int4Linear(torch.nn.Module):
    """A Linear with int4 weights in groups of `group_size` input channels: w ≈ (q − 8)·scale + zero per group (q in
    0..15; tinygemm's convention), bf16 activations, PyTorch's int4 matmul on CUDA and CPU.

    Written here rather than taken from torchao because torchao's tile-packed int4 tensor pads every input width to a
    multiple of 1024 before packing (SmolLM2's 576 → 1024, 1536 → 2048: ~1.6x the int4 bytes, and the activations are
    padded on every call). PyTorch's packing op only needs the width to be a multiple of 16·inner_k_tiles (inner_k_tiles
    2, 4 or 8), so the layer packs at the largest of those that divides its width: no padding."""

    def __init__(self, in_features: int, out_features: int, group_size: int, bias: torch.Tensor | None,
                 device: torch.device):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.inner_k_tiles = self.tiles_for(in_features)
        self.register_buffer("qdata", torch.empty(0, dtype=torch.uint8, device=device))
        self.register_buffer("scale_and_zero", torch.empty(in_features // group_size, out_features, 2,
                                                           dtype=torch.bfloat16, device=device))
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().to(device, torch.bfloat16),
                                                                 requires_grad=False)

    @staticmethod
    def tiles_for(k: int) -> int | None:
        return next((t for t in (8, 4, 2) if k % (16 * t) == 0), None)

    @classmethod
    def supports(cls, linear: torch.nn.Linear, group_size: int) -> bool:
        k, n = linear.in_features, linear.out_features
        return k % group_size == 0 and cls.tiles_for(k) is not None and n % 16 == 0

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, group_size: int, qparams: str = "minmax") -> Int4Linear:
        """`qparams`: see `quantize_int4`."""
        from torchao.quantization.utils import pack_tinygemm_scales_and_zeros

        w = linear.weight.detach()
        n, k = w.shape
        q, scale, zero = quantize_int4(w, group_size, qparams)
        layer = cls(k, n, group_size, linear.bias, w.device)
        layer.scale_and_zero = pack_tinygemm_scales_and_zeros(scale, zero, torch.bfloat16).to(w.device)
        layer.qdata = layer._pack(q)
        return layer

    def _pack(self, q: torch.Tensor) -> torch.Tensor:
        """int values 0..15 [out, in] → the int4 layout of this device's kernel."""
        device = self.scale_and_zero.device
        if device.type == "cuda":  # the CUDA op takes two values per byte, the first in the high nibble
            q = q.to(device, torch.int32)
            return torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8),
                                                              self.inner_k_tiles)
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(device, torch.int32), self.inner_k_tiles)

    def _mm(self, x: torch.Tensor, scale_and_zero: torch.Tensor) -> torch.Tensor:
        if self.qdata.device.type == "cuda":
            return torch.ops.aten._weight_int4pack_mm(x, self.qdata, self.group_size, scale_and_zero)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.qdata, self.group_size, scale_and_zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._mm(x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous(), self.scale_and_zero)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def int_values(self) -> torch.Tensor:
        """The stored q (0..15) as [out, in] uint8, read back through the kernel itself: with scale 1 and zero 0 the
        matmul of the identity returns q − 8 exactly (small integers are exact in bf16)."""
        unit = torch.zeros_like(self.scale_and_zero)
        unit[..., 0] = 1.0
        eye = torch.eye(self.in_features, dtype=torch.bfloat16, device=self.qdata.device)
        return (self._mm(eye, unit).t().float() + 8).round().to(torch.uint8)

    def dequantize(self) -> torch.Tensor:
        """The weight as the kernel sees it, [out, in] in bf16: (q − 8)·scale + zero per group."""
        return dequantize_int4(self.int_values(), self.scale_and_zero.transpose(0, 1), self.group_size)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        q = self.int_values()  # device-independent form: two values per byte, plain row order
        destination[prefix + "qweight"] = nibbles(q).cpu()
        destination[prefix + "scale_and_zero"] = self.scale_and_zero if keep_vars else self.scale_and_zero.detach()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        device = self.scale_and_zero.device
        names = ("qweight", "scale_and_zero", *(["bias"] if self.bias is not None else []))
        missing = [prefix + n for n in names if prefix + n not in state_dict]
        missing_keys.extend(missing)
        if strict:  # e.g. a float `weight` offered to an int4 layer
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and "." not in k[len(prefix):]
                                   and k[len(prefix):] not in names)
        if missing:
            return
        q = unnibble(state_dict[prefix + "qweight"]).reshape(self.out_features, self.in_features)
        self.scale_and_zero = state_dict[prefix + "scale_and_zero"].to(device, torch.bfloat16)
        self.qdata = self._pack(q)
        if self.bias is not None:
            self.bias = torch.nn.Parameter(state_dict[prefix + "bias"].to(device, torch.bfloat16), requires_grad=False)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 group_size={self.group_size}"


class Int4TiedHead(torch.nn.Module):
    """An LM head tied to an Int4Embedding: logits = x · Wᵀ with W the embedding's dequantized matrix, computed per
    call (a transient bf16 copy; the stored weights stay int4, one copy as in the float model). The embedding is held
    by reference, not as a submodule, so the state dict keeps it once."""

    def __init__(self, embedding: Int4Embedding, bias: torch.Tensor | None):
        super().__init__()
        self.__dict__["embedding"] = embedding  # not registered: the model owns it as its input embedding
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().to(torch.bfloat16),
                                                                 requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.linear(x.to(torch.bfloat16), self.embedding.dequantize(), self.bias)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"tied to an int4 embedding of {self.embedding.num_embeddings} rows"


def _configs(method: str):
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis

    return (Int8WeightOnlyConfig() if method == "weight_only_int8" else None,
            IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)))


def apply(model: torch.nn.Module, method: str, group_size: int, embeddings: bool, skip: list[str],
          device: torch.device, int4_qparams: str = "minmax", embedding_bits: int = 8,
          embedding_group_size: int = 32) -> dict:
    """Quantize the model in place on `device`; returns what was quantized (saved in trainopt.json).
    `embedding_bits` 4 (weight_only_int4 only): vocabulary embeddings → Int4Embedding in groups of
    `embedding_group_size` (a tied head → Int4TiedHead on it); 8: torchao's int8 per row."""
    from torchao.quantization import quantize_


    linear_cfg, embedding_cfg = _configs(method)
    model.to(device).eval()
    if method == "weight_only_int4":
        model.to(torch.bfloat16)  # the int4 kernels take bf16 activations and scales

    def skipped(fqn):
        return any(s and s in fqn for s in skip)

    def is_embedding(m, fqn):
        return embeddings and isinstance(m, torch.nn.Embedding) and m.num_embeddings >= MIN_EMBEDDING_ROWS and \
            not skipped(fqn)

    embedding = [n for n, m in model.named_modules() if is_embedding(m, n)]
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    # A head tied to a quantized embedding keeps sharing its (now int8) matrix instead of becoming a second copy.
    tied_head = head if (isinstance(head, torch.nn.Linear) and inputs is not None and head.weight is inputs.weight
                         and any(model.get_submodule(n) is inputs for n in embedding)) else None
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not skipped(n)
                  and m is not tied_head]
    if method == "weight_only_int4":
        linear = [n for n, m in candidates if Int4Linear.supports(m, group_size)]
    else:
        linear = [n for n, _ in candidates]
    int4_embedding = [n for n in embedding if method == "weight_only_int4" and embedding_bits == 4
                      and Int4Embedding.supports(model.get_submodule(n), embedding_group_size)]
    head_on_int4 = False  # a tied head follows its embedding: onto the int4 one, or sharing the int8 matrix
    for name in int4_embedding:
        module = model.get_submodule(name)
        set_module(model, name, Int4Embedding.from_embedding(module, embedding_group_size, int4_qparams))
        if tied_head is not None and module is inputs:
            head_name = next(n for n, m in model.named_modules() if m is tied_head)
            set_module(model, head_name, Int4TiedHead(model.get_submodule(name), tied_head.bias))
            head_on_int4 = True
    int8_embedding = set(embedding) - set(int4_embedding)
    if int8_embedding:
        quantize_(model, embedding_cfg, filter_fn=lambda m, fqn: fqn in int8_embedding)
        if tied_head is not None and not head_on_int4:
            tied_head.weight = inputs.weight
    if method == "weight_only_int4":
        for name in linear:
            set_module(model, name, Int4Linear.from_linear(model.get_submodule(name), group_size, int4_qparams))
    elif linear:
        names = set(linear)
        quantize_(model, linear_cfg, filter_fn=lambda m, fqn: fqn in names)
    return {"method": method, "format": "torchao", "group_size": group_size if method == "weight_only_int4" else None,
            "int4_qparams": int4_qparams if method == "weight_only_int4" else None,
            "embeddings_quantized": bool(embedding), "skip": skip, "linear_modules": len(linear),
            "linear_modules_kept_float": len(candidates) - len(linear), "embedding_modules": embedding,
            "tied_head_shares_embedding": tied_head is not None,
            "embedding_bits": 4 if int4_embedding else 8 if embedding else None,
            "embedding_group_size": embedding_group_size if int4_embedding else None,
            "int4_embedding_modules": int4_embedding,
            "dtype": "bfloat16" if method == "weight_only_int4" else "float32"}


def int4_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The dequantized weights of the int4 modules (buffers, not nn.Parameters), each module once (a tied head has
    none of its own), so that parameter counts include them."""
    return [m.dequantize() for m in model.modules() if isinstance(m, (Int4Linear, Int4Embedding))]


def is_quantized(model: torch.nn.Module) -> bool:
    return any(_is_ao(p) for p in model.parameters()) or \
        any(isinstance(m, (Int4Linear, Int4Embedding)) for m in model.modules())


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
    seen: set = set()
    for k, v in model.state_dict().items():  # tied tensors once (an untouched or an int8 tied embedding)
        key = tuple(getattr(v, n).data_ptr() for n in v.tensor_data_names) if _is_ao(v) else v.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        state[k] = v.detach().cpu() if not _is_ao(v) else v.cpu()
    tensors, metadata = flatten_tensor_state_dict(state)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={**metadata, "format": "pt"})


def load(model: torch.nn.Module, path, info: dict, device: torch.device) -> torch.nn.Module:
    """Rebuild a model saved by `save`: the same quantization on its config's weights, then the stored integers."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    apply(model, info["method"], info.get("group_size") or 128, info.get("embeddings_quantized", False),
          info.get("skip", []), device, embedding_bits=info.get("embedding_bits") or 8,
          embedding_group_size=info.get("embedding_group_size") or 32)
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
