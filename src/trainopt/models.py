"""Models and tokenizers: load local HF checkpoints, build from a config, train a tokenizer, save atomically.

Every saved model is a plain `save_pretrained` folder (safetensors) with its tokenizer and label map, plus a
small `trainopt.json` (task, label names, max length); plain `transformers` loads it without trainopt.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import torch

from . import assets
from .errors import RecipeError, TrainoptError
from .recipe import Recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                "attention_dropout", "hidden_dropout", "dropout", "classifier_dropout")
META_FILE = "trainopt.json"


def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def resolve_model_ref(ref: str) -> Path:
    if ref == "builtin:minilm-l6":
        return assets.minilm_path()
    if ref == "builtin:smollm2-135m":
        return assets.asset_path("smollm2")
    return Path(ref).expanduser()


def _auto_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM


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


def load_tokenizer(recipe: Recipe, train_texts: list[str] | None = None):
    from transformers import AutoTokenizer

    _quiet_transformers()
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


def load_model(recipe: Recipe, tokenizer, label_names: list[str] | None = None):
    """Load a local checkpoint as the recipe's task, or build a fresh model from model.config."""
    from transformers import AutoConfig

    _quiet_transformers()
    spec, task = recipe.model, recipe.task
    label_kwargs = {}
    if task == "classification":
        label_kwargs = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
                        "label2id": {n: i for i, n in enumerate(label_names)}}
    if spec.config is not None:
        cfg = dict(spec.config)
        model_type = cfg.pop("model_type")
        cfg.setdefault("vocab_size", len(tokenizer))
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(tokenizer, attr, None) is not None:
                cfg.setdefault(attr, getattr(tokenizer, attr))
        try:
            config = AutoConfig.for_model(model_type, **cfg, **label_kwargs)
        except (ValueError, TypeError) as e:
            raise RecipeError("model.config", str(e).splitlines()[0][:200], "check model_type and its keys") from None
        _set_dropout(config, spec.dropout)
        torch.manual_seed(recipe.run.seed)
        return _auto_class(task).from_config(config)
    path = resolve_model_ref(spec.path)
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=spec.trust_remote_code)
    except Exception as e:
        raise RecipeError("model.path", f"{path} is not a loadable HF checkpoint folder "
                          f"({str(e).splitlines()[0][:160]})", "give a folder with config.json and weights") from None
    for k, v in label_kwargs.items():
        setattr(config, k, v)
    _set_dropout(config, spec.dropout)
    meta_file = path / META_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if meta.get("structure") or meta.get("quantization"):  # shapes/format only trainopt's loader rebuilds
        model, _, _ = load_saved(path, task)
        if task == "classification" and model.config.num_labels != len(label_names):
            raise RecipeError("model.path", f"{path} was saved with {model.config.num_labels} labels, the data has "
                              f"{len(label_names)}", "use data with the model's labels (or an unpruned checkpoint)")
        return model
    same_head = task == "classification" and getattr(config, "num_labels", None) == len(label_names or [])
    try:
        model = _auto_class(task).from_pretrained(str(path), config=config, trust_remote_code=spec.trust_remote_code,
                                                  ignore_mismatched_sizes=not same_head, dtype=torch.float32)
    except pickle.UnpicklingError as e:
        raise unsafe_pickle("model.path", path, e) from None
    except (RuntimeError, OSError, ValueError) as e:
        raise RecipeError("model.path", f"cannot load the weights in {path} ({str(e).splitlines()[0][:160]})",
                          "give a complete HF checkpoint folder whose weights match its config.json") from None
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model


def unsafe_pickle(key: str, path, e: Exception) -> RecipeError:
    """A pickled weights file that holds more than tensors (code a pickle would run): refused, never executed —
    weights load with safetensors or torch.load(weights_only=True) only."""
    what = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported" in line),
                str(e).splitlines()[0] if str(e) else type(e).__name__)
    return RecipeError(key, f"refused to load {path}: its pickled weights hold more than tensors ({what[:140]})",
                       "use a safetensors checkpoint from a source you trust")


def save_model(model, tokenizer, out_dir: Path, meta: dict) -> Path:
    """save_pretrained (safetensors) + tokenizer + trainopt.json, written to a temporary folder then renamed."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from .compress import weight_only
    from .compress.blocks import detect_structure
    from .compress.quantize import export_tensors, is_quantized

    structure = detect_structure(model)
    meta = {k: v for k, v in meta.items() if k != "structure"}
    if structure is not None:  # pruned shapes the config cannot express: trainopt's loader restores them
        meta["structure"] = structure
    if weight_only.is_quantized(model):  # torchao tensors; see compress/weight_only.py for the format
        model.config.save_pretrained(tmp)
        weight_only.save(model, tmp / "model.safetensors")
    elif is_quantized(model):  # integer weights + scales; see compress/quantize.py for the format
        from safetensors.torch import save_file

        tensors, info = export_tensors(model)
        meta = {**meta, "quantization": {**meta.get("quantization", {}), **info}}
        model.config.save_pretrained(tmp)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    else:
        model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
    return out_dir


def saved_task(model_dir: Path) -> str:
    """The task a saved folder was made for: trainopt.json says it, else the config's architecture does."""
    model_dir = Path(model_dir)
    meta_file = model_dir / META_FILE
    task = json.loads(meta_file.read_text()).get("task") if meta_file.is_file() else None
    if task:
        return task
    archs = " ".join(json.loads((model_dir / "config.json").read_text()).get("architectures") or [])
    return "causal_lm" if "CausalLM" in archs or "LMHead" in archs else "classification"


def load_saved(model_dir: Path, task: str | None = None):
    """Load a folder saved by trainopt (or any HF checkpoint): (model, tokenizer, meta)."""
    from transformers import AutoConfig, AutoTokenizer

    _quiet_transformers()
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise TrainoptError(f"{model_dir} is not a model folder (no config.json)")
    meta = json.loads((model_dir / META_FILE).read_text()) if (model_dir / META_FILE).is_file() else {}
    config = AutoConfig.from_pretrained(str(model_dir))
    task = task or saved_task(model_dir)
    if meta.get("quantization") or meta.get("structure"):
        from safetensors.torch import load_file

        from .compress.blocks import apply_structure
        from .compress.quantize import import_tensors

        model = _auto_class(task).from_config(config)
        if meta.get("structure"):
            apply_structure(model, meta["structure"])
        weights = model_dir / "model.safetensors"
        if meta.get("quantization", {}).get("format") == "torchao":  # weight-only int8/int4 (compress/weight_only.py)
            from .compress import weight_only

            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            model = weight_only.load(model, weights, meta["quantization"], device)
        elif meta.get("quantization"):
            import_tensors(model, load_file(str(weights)), meta["quantization"])
        else:
            _load_plain(model, load_file(str(weights)))
    else:
        try:
            model = _auto_class(task).from_pretrained(str(model_dir), dtype=torch.float32)
        except pickle.UnpicklingError as e:
            raise unsafe_pickle("", model_dir, e) from None
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    meta.setdefault("task", task)
    if task == "classification" and "labels" not in meta:
        meta["labels"] = [config.id2label[i] for i in range(config.num_labels)]
    model.eval()
    return model, tokenizer, meta


def _load_plain(model, tensors: dict) -> None:
    """Load a save_pretrained state dict into a model built with the saved shapes; tied weights are saved once."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {k for k in missing if k.endswith(".weight") and getattr(model.config, "tie_word_embeddings", False)}
    if unexpected or set(missing) - tied:
        raise TrainoptError(f"the saved weights do not match the recorded structure: missing "
                            f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}")
    if tied:
        model.tie_weights()


def count_params(model) -> tuple[int, int]:
    """(parameters, non-zero parameters), counting tied weights once and quantized weights as parameters."""
    from .compress.quantize import quantized_weights
    from .compress.weight_only import dequantized, int4_weights

    seen, total, nonzero = set(), 0, 0
    tensors = [dequantized(p.detach()) for p in model.parameters()] + quantized_weights(model) + int4_weights(model)
    for t in tensors:
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel()
        nonzero += int(torch.count_nonzero(t).item())
    return total, nonzero


def disk_bytes(model_dir: Path) -> int:
    """Bytes of the weight files in a saved folder (safetensors/bin), what a deployment ships for weights."""
    return sum(f.stat().st_size for f in Path(model_dir).iterdir()
               if f.is_file() and (f.suffix in (".safetensors", ".bin", ".pt", ".pth")))
