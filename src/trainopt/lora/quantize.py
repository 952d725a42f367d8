"""QLoRA's frozen base: every Linear layer of the model except its output head stored in 4-bit (NF4 or FP4 through
bitsandbytes, with double quantisation of the block scales by default), so that LoRA trains bf16 adapters on top.

Why by hand: transformers quantises with bitsandbytes only inside `from_pretrained(quantization_config=...)`, while a
stage gets its parent's model already built (a GGUF import, a pruned structure, a config-only model); this swaps the
built model's nn.Linear modules for bitsandbytes' Linear4bit with the same weights, the same thing transformers'
loader does for a folder (same blocksize 64, same quantiser), and marks the model `is_loaded_in_4bit` so that PEFT
wraps each one with its 4-bit LoRA layer. `dequantized()` turns an adapted 4-bit model back into a plain one (the
dequantised base with the same adapter), which PEFT can merge exactly.

bitsandbytes runs 4-bit on CUDA and on the CPU (its CPU backend; slower there, each forward dequantises in PyTorch).
"""

from __future__ import annotations

import torch

BLOCKSIZE = 64  # bitsandbytes' default for 4-bit weights (and QLoRA's)


def head_ids(model) -> set[int]:
    """The output layers that stay in full precision: the LM head (whatever `get_output_embeddings` names) and any
    classifier head PEFT trains in full (`modules_to_save`-style `score` / `classifier`)."""
    out = set()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        out.add(id(head))
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("score", "classifier", "lm_head"):
            out.update(id(m) for m in module.modules())
    return out


def quantize_base(model, quant_type: str, double_quant: bool, compute_dtype: torch.dtype,
                  device: torch.device) -> dict:
    """Replace every nn.Linear except the output head by a bitsandbytes Linear4bit on `device`, in place. Returns
    what changed: {"layers", "params", "weight_bytes" (the 4-bit weights and their scales, as stored)}."""
    import bitsandbytes as bnb

    skip = head_ids(model)
    swaps = [(name, m) for name, m in model.named_modules()
             if type(m) is torch.nn.Linear and id(m) not in skip]
    params = stored = 0
    for name, linear in swaps:
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=compute_dtype, compress_statistics=double_quant, quant_type=quant_type,
                              device="meta")
        q.weight = bnb.nn.Params4bit(linear.weight.detach().float(), requires_grad=False, blocksize=BLOCKSIZE,
                                     compress_statistics=double_quant, quant_type=quant_type)
        if linear.bias is not None:
            q.bias = torch.nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        # bitsandbytes repacks a CPU weight in place for its AVX512-bf16 kernel at the first inference-mode forward
        # (in bf16, for layers whose width divides 32): that changes the numbers between evaluation and training and
        # fails on narrow layers, so the weights stay in the one format that trains
        q.support_avx512bf16_for_cpu = False
        q = q.to(device)  # bitsandbytes quantises on the move to a device
        params += linear.weight.numel()
        stored += q.weight.numel() * q.weight.element_size() + _state_bytes(q.weight.quant_state)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, q)
    model.is_loaded_in_4bit = True  # what PEFT reads to wrap Linear4bit with its 4-bit LoRA layer
    return {"layers": len(swaps), "params": params, "weight_bytes": stored}


def _state_bytes(state) -> int:
    """Bytes of a 4-bit weight's scales (absmax, and with double quantisation the nested absmax and code)."""
    nested = state.state2  # None without double quantisation
    tensors = [state.absmax] + ([nested.absmax, nested.code] if nested is not None else [])
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def dequantize_linears(model) -> int:
    """Every bitsandbytes Linear4bit in `model` replaced by an nn.Linear holding its dequantised weight (fp32)."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    swaps = [(name, m) for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    for name, q in swaps:
        w = dequantize_4bit(q.weight.data, q.weight.quant_state).float()
        linear = torch.nn.Linear(q.in_features, q.out_features, bias=q.bias is not None, device=w.device)
        linear.weight = torch.nn.Parameter(w, requires_grad=False)
        if q.bias is not None:
            linear.bias = torch.nn.Parameter(q.bias.detach().float(), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, linear)
    if hasattr(model, "is_loaded_in_4bit"):
        del model.is_loaded_in_4bit
    return len(swaps)


def dequantized(adapted):
    """A PEFT model with the same adapter on the dequantised base (plain nn.Linear layers): its outputs equal the 4-bit
    model's up to matmul rounding, and PEFT merges it like any LoRA model."""
    import copy

    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(adapted).items()}
    config = copy.deepcopy(adapted.peft_config["default"])
    base = adapted.unload()  # the base model with its Linear4bit layers back in place of the LoRA wrappers
    dequantize_linears(base)
    plain = get_peft_model(base, config)
    set_peft_model_state_dict(plain, state)
    return plain
