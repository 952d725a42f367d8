"""Where the transformer blocks and their parts are, and how a structurally pruned model is rebuilt.

`transformers` 5 has no `prune_heads`, and no config key can say that layer 3 keeps 7 of 12 BERT heads
(BERT derives the head width from hidden_size / num_attention_heads), so the shapes of a structurally
pruned model are ours to record and restore: `detect_structure` reads them off a model (saved in
trainopt.json → "structure" when the config cannot express them) and `apply_structure` gives a freshly built
model the same shapes before its weights are loaded.
"""

from __future__ import annotations

import torch

from ..errors import RecipeError
from ..modules import set_module
from .. import portable_modeling

# The block layouts (the dotted paths, relative to one block, of the Linear layers structured pruning slices) and the
# code that rebuilds recorded shapes live in the model code shipped inside sealed folders (portable_modeling.py),
# which must run without trainopt; this module adds trainopt's errors and the slicing that prunes.


def find_blocks(model: torch.nn.Module, key: str = "stages") -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """(parent, attribute, blocks): the ModuleList whose length is the config's layer count."""
    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and n > 0:
            parent_name, _, attr = name.rpartition(".")
            return (model.get_submodule(parent_name) if parent_name else model), attr, module
    raise RecipeError(key, f"cannot find the {n} transformer blocks of {type(model).__name__}",
                      "use a BERT- or Llama-style model")


def layout(model: torch.nn.Module) -> dict | None:
    """The part names of this model's blocks, or None when the architecture is not one we know."""
    _, _, blocks = find_blocks(model)
    return portable_modeling.layout_of(blocks[0])


def head_dim(model: torch.nn.Module) -> int:
    return portable_modeling.head_dim(model.config)


def _features(module, attr: str) -> int:
    value = getattr(module, attr, None)  # nn.Linear and torch.ao's quantized Linear both carry these
    if value is None:
        raise AttributeError(attr)
    return int(value)


def detect_structure(model: torch.nn.Module) -> dict | None:
    """Per-layer kept heads and FFN widths, when they differ from what the config alone would build."""
    lay = layout(model)
    if lay is None:
        return None
    _, _, blocks = find_blocks(model)
    cfg = model.config
    ffn = [_features(b.get_submodule(lay["down"]), "in_features") for b in blocks]
    heads = None
    if "q" in lay:
        heads = [_features(b.get_submodule(lay["q"]), "out_features") // head_dim(model) for b in blocks]
    plain_ffn = all(f == cfg.intermediate_size for f in ffn)
    plain_heads = heads is None or all(h == cfg.num_attention_heads for h in heads)
    if plain_ffn and plain_heads:
        return None
    return {"heads": heads, "intermediate": ffn}


def slice_linear(linear: torch.nn.Linear, rows: torch.Tensor | None = None,
                 cols: torch.Tensor | None = None) -> torch.nn.Linear:
    """A new Linear keeping the given output rows and input columns (index tensors, in order)."""
    w, b = linear.weight.detach(), (linear.bias.detach() if linear.bias is not None else None)
    if rows is not None:
        w = w.index_select(0, rows.to(w.device))
        b = b.index_select(0, rows.to(w.device)) if b is not None else None
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def shrink_block(block: torch.nn.Module, lay: dict, hd: int, heads: list[int] | None,
                 neurons: list[int] | None) -> None:
    """Keep only the given heads and FFN neurons of one block (indices into the current shapes)."""
    if heads is not None and "q" in lay:
        rows = torch.tensor([h * hd + i for h in sorted(heads) for i in range(hd)], dtype=torch.long)
        for part in ("q", "k", "v"):
            set_module(block, lay[part], slice_linear(block.get_submodule(lay[part]), rows=rows))
        set_module(block, lay["o"], slice_linear(block.get_submodule(lay["o"]), cols=rows))
        attn = block.get_submodule(lay["q"].rpartition(".")[0])
        if hasattr(attn, "num_attention_heads"):  # BERT reshapes with -1 heads; keep its bookkeeping true too
            attn.num_attention_heads = len(heads)
            attn.all_head_size = len(heads) * hd
    if neurons is not None:
        idx = torch.tensor(sorted(neurons), dtype=torch.long)
        for path in lay["up"]:
            set_module(block, path, slice_linear(block.get_submodule(path), rows=idx))
        set_module(block, lay["down"], slice_linear(block.get_submodule(lay["down"]), cols=idx))


def apply_structure(model: torch.nn.Module, structure: dict) -> None:
    """Give a freshly built model the recorded per-layer shapes (its weights are loaded afterwards)."""
    if layout(model) is None:
        raise RecipeError("model", f"trainopt.json records a pruned structure, but {type(model).__name__} has no "
                          "known block layout", "load it with the trainopt version that saved it")
    portable_modeling.apply_structure(model, structure)
