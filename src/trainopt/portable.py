"""Saved folders that plain transformers loads correctly, or refuses: never a model with re-initialised weights.

A folder whose config describes the model (a fine-tuned model, a layer-dropped student, FFN pruning that left every
layer the same width: structured.apply_plan writes it as intermediate_size) is a plain `save_pretrained` folder.
A folder whose shapes no config key can express (per-layer head counts and FFN widths after structured pruning) or
whose weights are in a trainopt format (dynamic int8, torchao int8/int4) is *sealed*: config.json gets a model_type
transformers does not know (`trainopt_<base>`), its real model_type under `trainopt.base_model_type`, and an
`auto_map` to `trainopt_modeling.py` (portable_modeling.py, copied in). Plain `from_pretrained(folder)` then refuses
and asks for trust_remote_code; with it, the shipped code rebuilds a pruned model's shapes and dynamic int8 modules
exactly (for torchao's formats it refuses, naming `trainopt predict` and `trainopt export`). trainopt's own loader
reads the base config through `read_config` and needs no remote code.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import portable_modeling

CODE_FILE = "trainopt_modeling.py"
AUTO_CLASS = {"classification": "AutoModelForSequenceClassification", "causal_lm": "AutoModelForCausalLM"}


def seal(folder: Path, model, task: str, structure: dict | None, quantization: dict | None) -> None:
    """Rewrite a saved folder's config.json so that plain transformers cannot mistake it for its base model."""
    if not structure and not quantization:
        return
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    base_type = config["model_type"]
    refuse = ""
    int8 = quantization.get("modules") if quantization and not quantization.get("format") else None
    if quantization and int8 is None:
        refuse = (f"this folder holds weights in trainopt's {quantization.get('format')} format, "
                  "which transformers cannot run: use `trainopt predict FOLDER`, or `trainopt export FOLDER --format "
                  "onnx|hf` for a folder other runtimes load")
    code = Path(portable_modeling.__file__).read_text()
    for name, value in (("BASE_CONFIG", type(model.config).__name__), ("BASE_MODEL", type(model).__name__),
                        ("MODEL_TYPE", f"trainopt_{base_type}"), ("REFUSE", refuse)):
        line = next(ln for ln in code.splitlines() if ln.startswith(f"{name} = "))
        code = code.replace(line, f"{name} = {value!r}  # written by trainopt", 1)
    (folder / CODE_FILE).write_text(code)
    if int8 is not None:  # quantized copies of tied tensors are stored apart: transformers must not tie them again
        config["tie_word_embeddings"] = False
    config.update({
        "model_type": f"trainopt_{base_type}",
        "trainopt": {"base_model_type": base_type, "structure": structure, "quantized": bool(quantization),
                     "int8": int8},
        "auto_map": {"AutoConfig": "trainopt_modeling.TrainoptConfig",
                     AUTO_CLASS[task]: "trainopt_modeling.TrainoptModel"},
    })
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def is_sealed(config: dict) -> bool:
    return isinstance(config.get("trainopt"), dict) and "base_model_type" in config["trainopt"]


def read_config(folder: Path):
    """The transformers config of a saved folder, sealed or plain (a sealed one as its base model's config)."""
    from transformers import AutoConfig

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    if not is_sealed(config):
        return AutoConfig.from_pretrained(str(folder))
    base_type = config["trainopt"]["base_model_type"]
    plain = {k: v for k, v in config.items() if k not in ("model_type", "trainopt", "auto_map", "transformers_version")}
    return AutoConfig.for_model(base_type, **plain)
