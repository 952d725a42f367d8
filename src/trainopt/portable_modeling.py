"""trainopt_modeling.py: the model code shipped inside a saved folder whose shapes or weights plain transformers
cannot build from a config alone, so that `from_pretrained(folder, trust_remote_code=True)` rebuilds it exactly and
plain `from_pretrained(folder)` refuses (transformers asks for trust_remote_code) instead of loading wrong weights.

trainopt copies this file into such a folder as `trainopt_modeling.py`, with the four constants below filled in, and
points config.json's `auto_map` at its two classes (trainopt/portable.py). It imports only torch and transformers:
the folder works where trainopt is not installed. trainopt's own loader uses `apply_structure` from here too, so there
is one implementation of the shapes.

- Structure (structured pruning: per-layer attention heads and FFN widths that no config key can express; see
  https://github.com/huggingface/transformers — transformers 5 dropped `prune_heads`): the model is built from the
  base config, then each block's Linear layers are resized to the recorded shapes before the weights load.
- Dynamic int8 (trainopt's `quantize` stage, `method: dynamic_int8`): the quantized Linear and Embedding modules are
  swapped for `Int8Linear` / `Int8Embedding` below (`Int4Embedding` for `embedding_bits: 4`), which hold the stored
  integers under the folder's own tensor names and run PyTorch's quantized kernels: the same outputs as trainopt's
  model.
- Other quantized formats (torchao weight-only int8/int4): the classes refuse with a message naming the way to run
  the folder, never a model with re-initialised weights.
"""

from __future__ import annotations

import torch
import transformers

BASE_CONFIG = "BertConfig"  # filled in by trainopt: the transformers config class of the model that was saved
BASE_MODEL = "BertForSequenceClassification"  # ... and its model class
MODEL_TYPE = "trainopt_bert"  # the folder's model_type: unknown to transformers, so plain loading asks for this code
REFUSE = ""  # non-empty for a format this file does not rebuild: the error raised instead of loading

# Dotted paths, relative to one transformer block, of the Linear layers structured pruning slices.
# heads: q/k/v rows and o columns of each head; ffn: rows of each "up" layer and columns of "down".
LAYOUTS = {
    "bert": {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense", "up": ["intermediate.dense"], "down": "output.dense"},
    "llama": {"up": ["mlp.gate_proj", "mlp.up_proj"], "down": "mlp.down_proj"},  # heads: grouped KV, not done
}


def blocks_of(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The ModuleList whose length is the config's layer count (the transformer blocks), or None."""
    n = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and n > 0:
            return module
    return None


def layout_of(block: torch.nn.Module) -> dict | None:
    """The part names of a block of a known architecture, or None."""
    for lay in LAYOUTS.values():
        try:
            for path in [lay["down"], *lay["up"], *[lay[k] for k in ("q", "k", "v", "o") if k in lay]]:
                block.get_submodule(path)
        except AttributeError:
            continue
        return lay
    return None


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _resize(block: torch.nn.Module, path: str, rows: int | None = None, cols: int | None = None) -> None:
    """Replace the Linear at `path` by an empty one with `rows` outputs / `cols` inputs (weights are loaded later)."""
    old = block.get_submodule(path)
    parent_name, _, attr = path.rpartition(".")
    new = torch.nn.Linear(cols or old.in_features, rows or old.out_features, bias=old.bias is not None,
                          device=old.weight.device, dtype=old.weight.dtype)
    setattr(block.get_submodule(parent_name) if parent_name else block, attr, new)


def apply_structure(model: torch.nn.Module, structure: dict) -> None:
    """Give a freshly built model the recorded per-layer shapes: structure = {"heads": [kept heads per layer, or
    None], "intermediate": [FFN width per layer]}."""
    blocks = blocks_of(model)
    lay = layout_of(blocks[0]) if blocks is not None else None
    if lay is None:
        raise ValueError(f"{type(model).__name__} has no block layout that a pruned structure can be applied to")
    hd = head_dim(model.config)
    heads = structure.get("heads") or [None] * len(blocks)
    for block, n_heads, width in zip(blocks, heads, structure["intermediate"]):
        if n_heads is not None and "q" in lay:
            for part in ("q", "k", "v"):
                _resize(block, lay[part], rows=n_heads * hd)
            _resize(block, lay["o"], cols=n_heads * hd)
            attn = block.get_submodule(lay["q"].rpartition(".")[0])
            if hasattr(attn, "num_attention_heads"):  # BERT reshapes with -1 heads; keep its bookkeeping true too
                attn.num_attention_heads = n_heads
                attn.all_head_size = n_heads * hd
        for path in lay["up"]:
            _resize(block, path, rows=width)
        _resize(block, lay["down"], cols=width)


class _Stored(torch.nn.Module):
    """The integer weight of a quantized module as trainopt stores it: `<module>.weight.int8|uint8`, `.scale`,
    `.zero_point` (so that from_pretrained loads the folder's tensors by name, no conversion)."""

    def __init__(self, rows: int, cols: int, kind: str):
        super().__init__()
        integer = torch.int8 if kind == "int8" else torch.uint8
        zero_dtype = torch.int32 if kind == "int8" else torch.float32
        self.kind = kind
        self.register_buffer(kind, torch.zeros(rows, cols, dtype=integer))
        self.register_buffer("scale", torch.ones(rows))
        self.register_buffer("zero_point", torch.zeros(rows, dtype=zero_dtype))

    def quantized(self) -> torch.Tensor:
        values = getattr(self, self.kind)
        scale = self.scale.double() if self.kind == "int8" else self.scale
        zero = self.zero_point.long() if self.kind == "int8" else self.zero_point
        return torch._make_per_channel_quantized_tensor(values, scale, zero, 0)


class Int8Linear(torch.nn.Module):
    """PyTorch's dynamic int8 Linear (int8 weights per output channel, the input quantized per call with x86's
    reduce_range), the kernel trainopt's `quantize` stage runs: the same outputs, bit for bit."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = _Stored(linear.out_features, linear.in_features, "int8")
        self.bias = None if linear.bias is None else torch.nn.Parameter(torch.zeros(linear.out_features),
                                                                        requires_grad=False)
        self._packed = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:  # packed once, after the weights are loaded
            self._packed = torch.ops.quantized.linear_prepack(self.weight.quantized(), self.bias)
        return torch.ops.quantized.linear_dynamic(x, self._packed, True)


class Int8Embedding(torch.nn.Module):
    """A vocabulary embedding in 8 bits per row (uint8 with a float scale and zero point per row), looked up by
    PyTorch's quantized embedding kernel, as trainopt's `quantize` stage stores it."""

    def __init__(self, embedding: torch.nn.Embedding):
        super().__init__()
        self.weight = _Stored(embedding.num_embeddings, embedding.embedding_dim, "uint8")
        self._packed = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            self._packed = torch.ops.quantized.embedding_bag_prepack(self.weight.quantized())
        return torch.ops.quantized.embedding_byte(self._packed, ids, pruned_weights=False)


class Int4Embedding(torch.nn.Module):
    """A vocabulary embedding in int4 (`embedding_bits: 4`): two values per byte (the first in the high nibble) in
    `qweight`, bf16 scale and zero per group of `group_size` hidden channels in `scale_and_zero`; a row is
    (q − 8)·scale + zero in bf16, computed as trainopt's Int4Embedding computes it."""

    def __init__(self, embedding: torch.nn.Embedding, group_size: int):
        super().__init__()
        rows, dim = embedding.num_embeddings, embedding.embedding_dim
        self.group_size = group_size
        self.register_buffer("qweight", torch.zeros(rows, dim // 2, dtype=torch.uint8))
        self.register_buffer("scale_and_zero", torch.zeros(rows, dim // group_size, 2, dtype=torch.bfloat16))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        p = self.qweight[ids].to(torch.int32)
        q = torch.stack([p >> 4, p & 15], dim=-1).flatten(-2)
        groups = q.to(torch.bfloat16).unflatten(-1, (-1, self.group_size))
        sz = self.scale_and_zero[ids]
        return ((groups - 8) * sz[..., 0:1] + sz[..., 1:2]).flatten(-2)


def apply_int8(model: torch.nn.Module, modules: dict) -> None:
    """Swap the named Linear / Embedding modules for the int8 (and int4 embedding) ones above (their weights are
    loaded afterwards)."""
    group = modules.get("embedding4_group_size")
    for kind, swap in (("linear", Int8Linear), ("embedding", Int8Embedding),
                       ("embedding4", lambda e: Int4Embedding(e, group))):
        for name in modules.get(kind, []):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, swap(getattr(parent, attr)))


class TrainoptConfig(getattr(transformers, BASE_CONFIG)):
    model_type = MODEL_TYPE


class TrainoptModel(getattr(transformers, BASE_MODEL)):
    config_class = TrainoptConfig

    def __init__(self, config, *args, **kwargs):
        if REFUSE:
            raise ValueError(REFUSE)
        super().__init__(config, *args, **kwargs)
        saved = getattr(config, "trainopt", None) or {}
        if saved.get("structure"):
            apply_structure(self, saved["structure"])
        if saved.get("int8"):
            apply_int8(self, saved["int8"])
