"""GGUF for llama.cpp: a Llama-family causal LM written with the `gguf` package (ggml's own Python writer).

Why by hand: llama.cpp's converter (`convert_hf_to_gguf.py`) is a script in its source tree, not an installable
library; the `gguf` package writes the file format but leaves the model's tensor names, metadata keys and layout to
the caller. What this module writes follows llama.cpp's conventions for the `llama` architecture:
- metadata: context length, widths, block count, head counts (grouped KV), RMSNorm epsilon, RoPE base and dimension;
  the tokenizer as a byte-level BPE (`gpt2` model: tokens, token types, merges, special ids, chat template), its
  pre-tokenizer named `smollm` when it splits digits one by one as SmolLM2's does, else `gpt-2`;
- tensors under llama.cpp's names (token_embd, blk.N.attn_q, ..., output_norm, output), the query and key rows of
  each head reordered from Hugging Face's rotate-half RoPE layout (first half, second half) to ggml's interleaved pairs;
- quantization with the package's own quantizers: `q8_0` (int8 in blocks of 32), `q4_0` (int4 in blocks of 32;
  the embedding, which is also the output head when they are tied, in q8_0 as llama.cpp's Q4 files keep it in a
  wider type), `f16`, `f32`; `q4_k_m` through llama.cpp's own quantizer (llama-cpp-python), from an f16 file. Norm
  weights stay f32.
transformers reads the file back (`from_pretrained(folder, gguf_file=...)`, dequantizing) and llama.cpp runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

MODEL_FILE = "model.gguf"
TYPES = ("q4_0", "q4_k_m", "q8_0", "f16", "f32")
_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def supports(config) -> str | None:
    """Why this model cannot be written as llama.cpp's `llama` architecture (None: it can)."""
    if getattr(config, "model_type", None) != "llama":
        return f"GGUF export covers Llama-family decoders (model_type llama), not {config.model_type}"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return "GGUF export covers the default RoPE (no scaling)"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "GGUF export covers Llama without attention/MLP biases"
    return None


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def write(model, tokenizer, path: Path, qtype: str) -> None:
    """Write `model` (a float LlamaForCausalLM) and its tokenizer to one GGUF file. `q4_k_m` (llama.cpp's mixed
    4/6-bit k-quant type, whose quantizer exists only in llama.cpp) is written as f16 and converted by llama.cpp's
    own `llama_model_quantize` (llama-cpp-python)."""
    if qtype == "q4_k_m":
        f16 = path.with_name(path.stem + ".f16.gguf")
        try:
            write(model, tokenizer, f16, "f16")
            _llama_quantize(f16, path, "LLAMA_FTYPE_MOSTLY_Q4_K_M")
        finally:
            f16.unlink(missing_ok=True)
        return
    import gguf

    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(getattr(cfg, "_name_or_path", "") or "trainopt export")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type({"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                     "f16": gguf.LlamaFileType.MOSTLY_F16, "f32": gguf.LlamaFileType.ALL_F32}[qtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _tokenizer(w, tokenizer, cfg.vocab_size)
    for name, tensor in _tensors(model):
        data = tensor.detach().float().cpu().numpy()
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = cfg.num_attention_heads if "attn_q" in name else cfg.num_key_value_heads
            data = _interleave_rope_rows(data, heads)
        kind = _type(name, data, qtype)
        if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(name, data.astype(np.float32 if kind == gguf.GGMLQuantizationType.F32 else np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _llama_quantize(src: Path, out: Path, ftype: str) -> None:
    import ctypes
    import os

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to {ftype}")


def _tensors(model):
    """(llama.cpp name, tensor) for every weight; a tied output head is not written (llama.cpp reuses token_embd)."""
    state = model.state_dict()
    tied = getattr(model.config, "tie_word_embeddings", False)
    for key, value in state.items():
        if key == "model.embed_tokens.weight":
            yield "token_embd.weight", value
        elif key == "model.norm.weight":
            yield "output_norm.weight", value
        elif key == "lm_head.weight":
            if not tied:
                yield "output.weight", value
        elif key.startswith("model.layers."):
            _, _, index, rest = key.split(".", 3)
            part, _, leaf = rest.rpartition(".")
            if part not in _NAMES:
                raise ValueError(f"no GGUF name for {key}")
            yield f"blk.{index}.{_NAMES[part]}.{leaf}", value
        elif not key.endswith("rotary_emb.inv_freq"):
            raise ValueError(f"no GGUF name for {key}")


def _type(name: str, data: np.ndarray, qtype: str):
    import gguf

    t = gguf.GGMLQuantizationType
    if data.ndim == 1:
        return t.F32
    if qtype in ("f32", "f16"):
        return t.F32 if qtype == "f32" else t.F16
    wanted = t.Q8_0 if qtype == "q8_0" or name == "token_embd.weight" or name == "output.weight" else t.Q4_0
    return wanted if data.shape[-1] % 32 == 0 else t.F16  # ggml blocks of 32 along each row


def _interleave_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Within each head, rows (r_0..r_{d/2-1}, r_{d/2}..r_{d-1}) -> (r_0, r_{d/2}, r_1, r_{d/2+1}, ...): Hugging Face
    rotates the two halves of a head, ggml rotates adjacent pairs; reordering q and k rows alike gives the same
    attention scores."""
    rows, cols = weight.shape
    d = rows // heads
    return weight.reshape(heads, 2, d // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _tokenizer(w, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE tokenizer (what Llama-family models trained or loaded by trainopt use) as ggml's `gpt2`."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not _byte_level(spec.get("pre_tokenizer")):
        raise ValueError("GGUF export covers byte-level BPE tokenizers (GPT-2, SmolLM2, Llama-3 style)")
    specials = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    added = {t["id"] for t in spec.get("added_tokens", [])}
    by_id = {i: tok for tok, i in tokenizer.get_vocab().items()}
    tokens, types = [], []
    for i in range(vocab_size):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(tok)
            types.append(gguf.TokenType.CONTROL if i in specials else
                         gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm" if _splits_digits(spec.get("pre_tokenizer")) else "gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for setter, value in ((w.add_bos_token_id, tokenizer.bos_token_id), (w.add_eos_token_id, tokenizer.eos_token_id),
                          (w.add_unk_token_id, tokenizer.unk_token_id), (w.add_pad_token_id, tokenizer.pad_token_id)):
        if value is not None:
            setter(int(value))
    w.add_add_bos_token(False)
    if getattr(tokenizer, "chat_template", None):
        w.add_chat_template(tokenizer.chat_template)


def _parts(pre) -> list[dict]:
    if not pre:
        return []
    return [p for item in pre.get("pretokenizers", [pre]) for p in _parts(item)] if pre.get("type") == "Sequence" \
        else [pre]


def _byte_level(pre) -> bool:
    return any(p.get("type") == "ByteLevel" for p in _parts(pre))


def _splits_digits(pre) -> bool:
    return any(p.get("type") == "Digits" and p.get("individual_digits") for p in _parts(pre))


def count(path: Path) -> tuple[int, int]:
    """(parameters, non-zero parameters) of a GGUF file: its tensors' logical elements (zeros are not counted in
    quantized blocks: every element is reported non-zero there)."""
    import gguf

    total = nonzero = 0
    for t in gguf.GGUFReader(str(path)).tensors:
        n = int(t.n_elements)
        total += n
        plain = t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
        nonzero += int(np.count_nonzero(t.data)) if plain else n
    return total, nonzero


def load_with_transformers(folder: Path):
    """The GGUF file read back by transformers' own GGUF loader (dequantized to float): the check that the file says
    what the model is, and the runtime of an export row where llama.cpp is not installed."""
    from transformers import AutoModelForCausalLM

    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per tensor group on the run's terminal otherwise
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=MODEL_FILE, dtype=torch.float32)
    model.runtime_name = f"transformers {transformers.__version__} GGUF loader (dequantized to float, PyTorch)"
    return model.eval()
