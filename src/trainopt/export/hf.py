"""`format: hf`: the model as a plain transformers folder, loadable with `from_pretrained` and no trainopt code.

What only trainopt's formats can hold is turned into what any transformers model is:
- structurally pruned shapes (per-layer heads / FFN widths no config expresses) are padded back to the config's
  shapes with zeros: a removed head gets zero query/key/value rows and zero output columns (its output is 0), a
  removed FFN neuron zero input rows, bias and output column (GELU(0) = SiLU(0) = 0): the logits are the pruned
  model's, at the unpruned size (`masked`, not `smaller`: use `format: onnx` to ship the small shapes);
- quantized weights (dynamic int8, torchao int8/int4) are dequantized to floats (the int8 model's values, float speed);
- a LoRA adapter is merged into its base (`trainopt.artifacts.load_saved` already returns a merged model for merged
  folders; an adapter-only folder is merged here);
- the weights are cast to the recipe's dtype.
"""

from __future__ import annotations

import torch

from ..compress.quantize import dynamic, weight_only
from ..modules import set_module
from ..portable_modeling import blocks_of, head_dim, layout_of


def plain_model(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The same function as `model`, made of plain transformers modules with the config's shapes (in place)."""
    if hasattr(model, "merge_and_unload"):  # a PEFT model: the adapters merged into the base weights
        model = model.merge_and_unload()
    _dequantize(model)
    _pad_structure(model)
    return model.to(dtype).eval()


def _dequantize(model: torch.nn.Module) -> None:
    from torch.ao.nn.quantized import Embedding as QEmbedding
    from torch.ao.nn.quantized.dynamic import Linear as QDynLinear

    for name, m in list(model.named_modules()):
        if isinstance(m, QDynLinear):
            w, b = m._weight_bias()
            new = torch.nn.Linear(m.in_features, m.out_features, bias=b is not None)
            with torch.no_grad():
                new.weight.copy_(w.dequantize())
                if b is not None:
                    new.bias.copy_(b)
            set_module(model, name, new)
        elif isinstance(m, QEmbedding):
            w = m.weight().dequantize()
            set_module(model, name, torch.nn.Embedding.from_pretrained(w, freeze=False))
        elif isinstance(m, weight_only.Int4Linear):
            new = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            with torch.no_grad():
                new.weight.copy_(m.dequantize().float())
                if m.bias is not None:
                    new.bias.copy_(m.bias.float())
            set_module(model, name, new)
        elif isinstance(m, weight_only.Int4Embedding):
            set_module(model, name, torch.nn.Embedding.from_pretrained(m.dequantize().float(), freeze=False))
        elif isinstance(m, weight_only.Int4TiedHead):  # the head tied to an int4 embedding: tied again below
            w = m.embedding.dequantize().float()
            new = torch.nn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None)
            with torch.no_grad():
                new.weight.copy_(w)
                if m.bias is not None:
                    new.bias.copy_(m.bias.float())
            set_module(model, name, new)
    for name, p in list(model.named_parameters()):  # torchao int8 tensors: plain float tensors again
        plain = weight_only.dequantized(p.detach())
        if plain is not p.detach():
            module_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module_name), attr, torch.nn.Parameter(plain.float(), requires_grad=False))
    if dynamic.is_quantized(model) or weight_only.is_quantized(model):
        raise ValueError("some quantized modules could not be turned back into float ones")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def _pad_structure(model: torch.nn.Module) -> None:
    blocks = blocks_of(model)
    lay = layout_of(blocks[0]) if blocks is not None else None
    if lay is None:
        return
    cfg = model.config
    hd = head_dim(cfg)
    for block in blocks:
        if "q" in lay:
            full = cfg.num_attention_heads * hd
            for part in ("q", "k", "v"):
                _pad(block, lay[part], rows=full)
            _pad(block, lay["o"], cols=full)
            attn = block.get_submodule(lay["q"].rpartition(".")[0])
            if hasattr(attn, "num_attention_heads"):
                attn.num_attention_heads, attn.all_head_size = cfg.num_attention_heads, full
        for path in lay["up"]:
            _pad(block, path, rows=cfg.intermediate_size)
        _pad(block, lay["down"], cols=cfg.intermediate_size)


def _pad(block: torch.nn.Module, path: str, rows: int | None = None, cols: int | None = None) -> None:
    """Zero-pad a Linear to `rows` outputs / `cols` inputs, its weights in the first rows/columns."""
    old = block.get_submodule(path)
    rows, cols = rows or old.out_features, cols or old.in_features
    if (rows, cols) == (old.out_features, old.in_features):
        return
    new = torch.nn.Linear(cols, rows, bias=old.bias is not None, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[: old.out_features, : old.in_features] = old.weight
        if old.bias is not None:
            new.bias.zero_()
            new.bias[: old.out_features] = old.bias
    set_module(block, path, new)
