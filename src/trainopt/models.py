"""Models and tokenizers in plain Hugging Face terms: load local HF checkpoints, build from a config, train a
tokenizer. A folder in one of trainopt's own formats (pruned shapes, quantized weights) is saved and loaded by
artifacts.py, which knows those formats; this module knows none of them.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from . import assets
from .errors import RecipeError, TrainoptError, unsafe_pickle
from .hf import auto_class, quiet_transformers
from .meta import meta_problem, read_meta

DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                "attention_dropout", "hidden_dropout", "dropout", "classifier_dropout")


def resolve_model_ref(ref: str) -> Path:
    if ref == "builtin:minilm-l6":
        return assets.minilm_path()
    if ref == "builtin:smollm2-135m":
        return assets.asset_path("smollm2")
    return Path(ref).expanduser()


def train_bpe_tokenizer(texts: list[str], vocab_size: int, min_frequency: int = 2):
    """A byte-level BPE tokenizer trained on the given texts with the `tokenizers` library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[eos],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, pad_token=eos,
                                   unk_token=eos)


def load_tokenizer(recipe, train_texts: list[str] | None = None):
    from transformers import AutoTokenizer

    quiet_transformers()
    spec = recipe.model
    if spec.train_tokenizer is not None:
        if not train_texts:
            raise TrainoptError("model.train_tokenizer needs training texts")
        return train_bpe_tokenizer(train_texts, spec.train_tokenizer.vocab_size, spec.train_tokenizer.min_frequency)
    ref = spec.tokenizer or spec.path
    path = resolve_model_ref(ref)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=spec.trust_remote_code)
    except Exception as e:
        raise RecipeError("model.tokenizer" if spec.tokenizer else "model.path",
                          f"cannot load a tokenizer from {path} ({str(e).splitlines()[0][:160]})",
                          "point it at a folder with tokenizer.json / tokenizer_config.json") from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def _set_dropout(config, p: float | None) -> None:
    if p is None:
        return
    for key in DROPOUT_KEYS:
        if hasattr(config, key):
            setattr(config, key, p)


def model_config(spec, tokenizer=None, **extra):
    """The transformers config of the recipe's `model:` (built from model.config, or read from model.path's
    config.json), or the recipe error naming the key. `tokenizer` fills a fresh config's vocabulary size and special
    token ids; `extra` (label maps) goes into a fresh config. Shared by the loader and the check before work (validate.py)."""
    from transformers import AutoConfig

    quiet_transformers()
    if spec.config is not None:
        cfg = dict(spec.config)
        model_type = cfg.pop("model_type")
        if tokenizer is not None:
            cfg.setdefault("vocab_size", len(tokenizer))
            for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
                if getattr(tokenizer, attr, None) is not None:
                    cfg.setdefault(attr, getattr(tokenizer, attr))
        try:
            return AutoConfig.for_model(model_type, **cfg, **extra)
        except (ValueError, TypeError) as e:
            raise RecipeError("model.config", str(e).splitlines()[0][:200], "check model_type and its keys") from None
    path = resolve_model_ref(spec.path)
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=spec.trust_remote_code)
    except Exception as e:  # noqa: BLE001 — any unreadable config is the same error for the user
        raise RecipeError("model.path", f"{path} is not a loadable HF checkpoint folder "
                          f"({str(e).splitlines()[0][:160]})", "give a folder with config.json and weights") from None
    return config


def load_model(recipe, tokenizer, label_names: list[str] | None = None):
    """Load a local checkpoint as the recipe's task, or build a fresh model from model.config."""
    spec, task = recipe.model, recipe.task
    label_kwargs = {}
    if task == "classification":
        label_kwargs = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
                        "label2id": {n: i for i, n in enumerate(label_names)}}
    if spec.config is not None:
        config = model_config(spec, tokenizer, **label_kwargs)
        _set_dropout(config, spec.dropout)
        torch.manual_seed(recipe.run.seed)
        return auto_class(task).from_config(config)
    path = resolve_model_ref(spec.path)
    config = model_config(spec)
    # A classifier saved with another number of labels gets a new head (the only shapes allowed to differ); read
    # before the label count is set below. Anything else that mismatches is an error, never a silent re-init.
    new_head = task == "classification" and getattr(config, "num_labels", None) != len(label_names or [])
    for k, v in label_kwargs.items():
        setattr(config, k, v)
    _set_dropout(config, spec.dropout)
    try:
        model = auto_class(task).from_pretrained(str(path), config=config, trust_remote_code=spec.trust_remote_code,
                                                  ignore_mismatched_sizes=new_head, dtype=torch.float32)
    except pickle.UnpicklingError as e:
        raise unsafe_pickle("model.path", path, e) from None
    except (RuntimeError, OSError, ValueError) as e:
        raise RecipeError("model.path", f"cannot load the weights in {path} ({str(e).splitlines()[0][:160]})",
                          "give a complete HF checkpoint folder whose weights match its config.json") from None
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model


def folder_problem(model_dir: Path) -> str | None:
    """Why a model folder cannot be loaded, read from its headers only (no weights): config.json or trainopt.json
    that is not JSON, a safetensors file whose header is cut or does not cover its tensors (a truncated copy or
    write). None when it looks whole."""
    from safetensors import SafetensorError, safe_open

    model_dir = Path(model_dir)
    f = model_dir / "config.json"
    if f.is_file():
        try:
            config = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            return f"{f} is not valid JSON ({str(e).splitlines()[0][:100]})"
        if not isinstance(config, dict):
            return f"{f} holds a JSON {type(config).__name__}, not an object"
    problem = meta_problem(model_dir)
    if problem:
        return problem
    for f in sorted(model_dir.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt"):
                pass
        except (SafetensorError, OSError) as e:
            return f"{f} is damaged ({str(e).splitlines()[0][:100]})"
    return None


MAX_LAYERS = 1024  # deeper than any transformer trainopt trains: a larger count is a damaged or mistyped config (and
# building it, even on the meta device, would take minutes)


def size_problem(config, build_on_meta) -> str | None:
    """Why a model of this config cannot be built here: a layer count out of range, or fp32 weights larger than this
    machine's memory (counted on `build_on_meta()`, the model built on the meta device). None when it fits."""
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        depth = getattr(config, key, None)
        if isinstance(depth, int) and not 0 <= depth <= MAX_LAYERS:
            return f"the config's {key} is {depth} (0 to {MAX_LAYERS} layers are built)"
    params = sum(p.numel() for p in build_on_meta().parameters())
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if params * 4 > have:
        return (f"the model has {params:,} parameters: its fp32 weights alone need {params * 4 / 1e9:,.1f} GB and "
                f"this machine has {have / 1e9:.1f} GB")
    return None


def meta_model(task: str, config):
    """The task's model class with the config's shapes on the meta device: no weights, no memory."""
    with torch.device("meta"):
        return auto_class(task).from_config(config)


def saved_task(model_dir: Path) -> str:
    """The task a saved folder was made for: trainopt.json says it, else the config's architecture does."""
    model_dir = Path(model_dir)
    task = read_meta(model_dir).get("task")
    if task:
        return task
    archs = json.loads((model_dir / "config.json").read_text()).get("architectures")
    archs = " ".join(a for a in archs if isinstance(a, str)) if isinstance(archs, list) else ""
    return "causal_lm" if "CausalLM" in archs or "LMHead" in archs else "classification"


def disk_bytes(model_dir: Path) -> int:
    """Bytes of the weight files in a saved folder (safetensors/bin, an ONNX graph and its external data), what a
    deployment ships for weights."""
    return sum(f.stat().st_size for f in Path(model_dir).iterdir()
               if f.is_file() and (f.suffix in (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".data", ".gguf")))
