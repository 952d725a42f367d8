"""A stage's saved model folder, in every format trainopt writes.

Every saved model is a plain `save_pretrained` folder (safetensors) with its tokenizer and label map, plus a small
`trainopt.json` (task, label names, max length). Shapes the config cannot express (structured pruning) and quantized
weights are recorded there, and such a folder is sealed (portable.py): plain `transformers` refuses it unless asked
to run the model code it ships, which rebuilds pruned shapes and dynamic int8 exactly (torchao formats refuse). ONNX
and GGUF export folders load here too (export/). This module sits above models.py (plain HF) and the technique
formats (compress/blocks.py, compress/quantize/, export/), so that neither has to know the other.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
from pathlib import Path

import torch

from .compress.blocks import apply_structure, detect_structure
from .compress.quantize import dynamic, weight_only
from .errors import RecipeError, TrainoptError, first_line, unsafe_pickle
from .hf import auto_class, quiet_transformers
from .meta import META_FILE, read_meta
from .models import folder_problem, meta_model, resolve_model_ref, saved_task, size_problem
from .portable import read_config, seal
from .models import load_model as load_hf_model


def load_model(recipe, tokenizer, label_names: list[str] | None = None):
    """The recipe's starting model: a folder trainopt saved in a format of its own (pruned shapes, quantized
    weights) through load_saved, anything else through plain transformers (models.load_model)."""
    path = resolve_model_ref(recipe.model.path) if recipe.model.path else None
    meta = read_meta(path) if path is not None else {}
    exported = path is not None and any((path / f).is_file() for f in ("model.onnx", "model.gguf"))
    if meta.get("structure") or meta.get("quantization") or exported:  # what only trainopt's loader rebuilds
        task = recipe.task
        model, _, _ = load_saved(path, task)
        if task == "classification" and model.config.num_labels != len(label_names):
            raise RecipeError("model.path", f"{path} was saved with {model.config.num_labels} labels, the data has "
                              f"{len(label_names)}", "use data with the model's labels (or an unpruned checkpoint)")
        return model
    return load_hf_model(recipe, tokenizer, label_names)


def save_model(model, tokenizer, out_dir: Path, meta: dict) -> Path:
    """save_pretrained (safetensors) + tokenizer + trainopt.json, written to a temporary folder then renamed."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if _onnx_path(model) is not None:  # an ONNX export being evaluated: its folder, as it is
        shutil.copytree(_onnx_path(model).parent, tmp)
        return publish_folder(tmp, out_dir)
    tmp.mkdir(parents=True)
    structure = detect_structure(model)
    meta = {k: v for k, v in meta.items() if k != "structure"}
    if structure is not None:  # pruned shapes the config cannot express: trainopt's loader restores them
        meta["structure"] = structure
    torchao = False  # dynamic int8 first: with `embedding_bits: 4` it also holds weight-only int4's Int4Embedding
    if dynamic.is_quantized(model):  # integer weights + scales; see compress/quantize/dynamic.py for the format
        from safetensors.torch import save_file

        tensors, info = dynamic.export_tensors(model)
        meta = {**meta, "quantization": {**meta.get("quantization", {}), **info}}
        model.config.save_pretrained(tmp)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    elif weight_only.is_quantized(model):  # torchao tensors; see compress/quantize/weight_only.py for the format
        torchao = True
        model.config.save_pretrained(tmp)
        weight_only.save(model, tmp / "model.safetensors")
    else:
        model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    # a shape or format plain transformers cannot build: its config points at shipped code (portable.py)
    seal(tmp, model, meta.get("task") or _task_of(model), structure, meta.get("quantization") or
         ({"format": "torchao"} if torchao else None))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    return publish_folder(tmp, out_dir)


def publish_folder(tmp: Path, out_dir: Path) -> Path:
    """Make a written folder durable and readable, then move it into place (replacing an older one)."""
    for f in tmp.iterdir():
        f.chmod(0o644)  # readable by a serving process of another user (safetensors writes 0600)
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


def load_saved(model_dir: Path, task: str | None = None):
    """Load a folder saved by trainopt (or any HF checkpoint): (model, tokenizer, meta)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    model_dir = Path(model_dir)
    if (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").is_file():
        return _load_adapter(model_dir, task)
    if not (model_dir / "config.json").is_file():
        raise TrainoptError(f"{model_dir} is not a model folder (no config.json)")
    problem = folder_problem(model_dir)  # headers only: a cut or hand-edited file is named before anything is built
    if problem:
        raise TrainoptError(f"{problem}; restore the folder or save it again")
    meta = read_meta(model_dir)
    task = task or saved_task(model_dir)
    with _damaged(model_dir):
        if (model_dir / "model.onnx").is_file():  # an ONNX export (export/onnx.py): onnxruntime runs it
            from .export.onnx import MODEL_FILE, OrtModel

            config = read_config(model_dir)
            model = OrtModel(model_dir / MODEL_FILE, config)
        elif (model_dir / "model.gguf").is_file():  # a GGUF export (export/gguf.py), read back by transformers
            from .export.gguf import load_with_transformers

            model = load_with_transformers(model_dir)
            config = model.config
        else:
            model, config = _build(model_dir, meta, task)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    meta.setdefault("task", task)
    if task == "classification" and "labels" not in meta:
        meta["labels"] = [config.id2label[i] for i in range(config.num_labels)]
    if task == "classification" and len(meta["labels"] or []) != config.num_labels:
        raise TrainoptError(f"{model_dir / META_FILE} lists {len(meta['labels'] or [])} labels and the model has "
                            f"{config.num_labels} outputs; restore the folder or save it again")
    model.eval()
    return model, tokenizer, meta


@contextlib.contextmanager
def _damaged(model_dir: Path):
    """A saved folder comes from disk and may be damaged or edited (a config transformers cannot build, weights that
    do not match it, a cut tokenizer file): whatever the libraries raise while building it becomes one line naming
    the folder. Disk-full and interrupts pass through."""
    from huggingface_hub.errors import StrictDataclassError  # a config field of the wrong type (transformers 5)
    from safetensors import SafetensorError

    try:
        yield
    except TrainoptError:
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise TrainoptError(f"cannot load {model_dir} ({first_line(e)}); restore the folder or save it again") \
            from None
    except (SafetensorError, StrictDataclassError, RuntimeError, ValueError, KeyError, TypeError, IndexError,
            AttributeError, ZeroDivisionError, OverflowError) as e:
        raise TrainoptError(f"cannot load {model_dir} ({first_line(e)}); restore the folder or save it again") \
            from None


def _build(model_dir: Path, meta: dict, task: str):
    """The model of a saved folder (its config, its recorded shapes and format, its weights) and its config."""
    config = read_config(model_dir)
    problem = size_problem(config, lambda: meta_model(task, config))
    if problem:
        raise TrainoptError(f"cannot load {model_dir}: {problem}; restore its config.json")
    quantization = meta.get("quantization") or {}
    if not (quantization or meta.get("structure")):
        try:
            model = auto_class(task).from_pretrained(str(model_dir), dtype=torch.float32)
        except pickle.UnpicklingError as e:
            raise unsafe_pickle("", model_dir, e) from None
        return model, config
    from safetensors.torch import load_file

    model = auto_class(task).from_config(config)
    if meta.get("structure"):
        apply_structure(model, meta["structure"])
    weights = model_dir / "model.safetensors"
    if quantization.get("format") == "torchao":  # weight-only int8/int4 (compress/quantize/weight_only.py)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = weight_only.load(model, weights, quantization, device)
    elif quantization:
        dynamic.import_tensors(model, load_file(str(weights)), quantization)
    else:
        _load_plain(model, load_file(str(weights)))
    return model, config


def _task_of(model) -> str:
    return "causal_lm" if type(model).__name__.endswith(("CausalLM", "LMHeadModel")) else "classification"


def _load_adapter(model_dir: Path, task: str | None):
    """A PEFT adapter folder (a `lora` stage with merge: false): its base model (the folder it names), the adapter on
    top through peft, as plain peft loads it."""
    from peft import PeftModel

    from .lora.folder import base_of

    base_dir = base_of(model_dir)
    if base_dir is None or not base_dir.is_dir():
        raise TrainoptError(f"{model_dir} is a LoRA adapter whose base model folder {base_dir} is missing; copy the "
                            "base back, or set base_model_name_or_path in its adapter_config.json")
    base, _, base_meta = load_saved(base_dir, task)
    meta = read_meta(model_dir)
    quant = (meta.get("lora") or {}).get("quantize_base")
    if quant:  # trained on a 4-bit base (QLoRA): the base quantised the same way first
        from .lora.quantize import quantize_base

        quantize_base(base, quant["quant_type"], quant["double_quant"], torch.float32, torch.device("cpu"))
    model = PeftModel.from_pretrained(base, str(model_dir))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    meta = {**base_meta, **meta}
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


def _onnx_path(model) -> Path | None:
    path = getattr(model, "path", None)
    return path if isinstance(path, Path) and path.suffix == ".onnx" else None


def count_params(model) -> tuple[int, int]:
    """(parameters, non-zero parameters), counting tied weights once and quantized weights as parameters."""
    if _onnx_path(model) is not None:
        from .export.onnx import count

        return count(_onnx_path(model))
    seen, total, nonzero = set(), 0, 0
    tensors = [weight_only.dequantized(p.detach()) for p in model.parameters()] + dynamic.quantized_weights(model) + weight_only.int4_weights(model)
    for t in tensors:
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel()
        nonzero += int(torch.count_nonzero(t).item())
    return total, nonzero


