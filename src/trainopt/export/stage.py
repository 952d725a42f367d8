"""The `export` stage and `trainopt export`: a saved model folder written in another runtime's format, checked
against trainopt's own model on the same inputs, and handed back as the model to measure in that runtime."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from ..artifacts import load_saved, publish_folder
from ..errors import TrainoptError
from ..meta import META_FILE, read_meta
from ..models import disk_bytes
from ..results import Outcome
from . import gguf, hf, llama_cpp, onnx
from .spec import ExportStage


def run(model, data, stage: ExportStage, ctx, stage_dir: Path):
    """Export the stage's parent (the saved folder it starts from) and return the export as the model to measure;
    the chain goes on from the parent's model, which is returned unchanged."""
    start = time.perf_counter()
    sample = _sample(ctx)
    out = stage_dir / "model"
    runtime, details = export_folder(ctx.parent_dir, out, stage, sample, ctx.recipe.task)
    params = details.pop("params")
    cost = {"wall_s": round(time.perf_counter() - start, 2), "tokens_per_s": None, "mfu": None, "peak_mem_bytes": None}
    outcome = Outcome(effect="compressed", claims="kernel", cost=cost, details={"export": details},
                      measure_device="cpu", runtime=runtime, folder=out, params=params)
    return model, outcome


def _sample(ctx) -> dict:
    """A batch to trace and to compare on: the run's timing inputs at their largest batch, else a few test rows."""
    if ctx.measure_inputs:
        return ctx.measure_inputs[max(ctx.measure_inputs)]
    split = ctx.data.test or ctx.data.validation or ctx.data.train
    if ctx.recipe.task == "classification":
        batch = split.collate(list(range(min(8, len(split)))))
        return {k: batch[k] for k in ("input_ids", "attention_mask")}
    return {"input_ids": split.blocks[: min(4, len(split)), : min(128, split.blocks.shape[1])]}


def export_folder(src: Path, out: Path, spec: ExportStage, sample: dict, task: str | None = None):
    """Write `src` (a saved model folder) to `out` in spec.format; returns (the export as a runnable model, details:
    files, bytes, agreement with trainopt's model on `sample`, params)."""
    src, out = Path(src), Path(out)
    model, tokenizer, meta = load_saved(src, task)
    if hasattr(model, "merge_and_unload"):  # a LoRA adapter folder: every format gets the merged weights
        model = model.merge_and_unload()
    task = meta.get("task") or task
    reference = _logits(model, sample)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    notes: list[str] = []
    try:
        if spec.format == "hf":
            _write_hf(model, tokenizer, tmp, spec)
        elif spec.format == "gguf":
            _write_gguf(model, tokenizer, src, tmp, spec)
        else:
            _write_onnx(model, src, tmp, spec, sample, reference, notes)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _side_files(src, tmp, model, tokenizer, {**read_meta(src), "task": task,
                                              "export": {"format": spec.format, "quantize": spec.quantize}})
    exported = _logits(_open(tmp, spec, task), sample)  # read back from the written files, before they are published
    diff = float((exported - reference).abs().max())
    agree = float((exported.argmax(-1) == reference.argmax(-1)).float().mean())
    # an int8 export, or a float export of int8 weights, computes other numbers by design: its agreement is reported
    approximate = spec.quantize != "none" or "quantization" in meta
    if not approximate and diff > spec.tolerance:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrainoptError(f"the {spec.format} export of {src} differs from trainopt's model by {diff:.3g} in the "
                            f"logits (tolerance {spec.tolerance:g}); report it, or raise the export's tolerance")
    publish_folder(tmp, out)
    runtime = _open(out, spec, task)
    details = {"format": spec.format, "quantize": spec.quantize,
               "runtime": _runtime_name(runtime), "files": sorted(p.name for p in out.iterdir()),
               "disk_bytes": disk_bytes(out), "max_abs_logit_diff": round(diff, 6),
               "same_prediction": round(agree, 4), "compared_on": list(sample["input_ids"].shape),
               "params": _params(runtime, out)}
    if notes:
        details["notes"] = notes
    return runtime, details


def _open(folder: Path, spec: ExportStage, task: str):
    """The export in its own runtime: onnxruntime, llama.cpp (or transformers' GGUF loader), plain transformers."""
    return llama_cpp.runtime(folder) if spec.format == "gguf" else load_saved(folder, task)[0]


def _logits(model, sample: dict) -> torch.Tensor:
    with torch.inference_mode():
        return model(**{k: v.cpu() for k, v in sample.items()}).logits.float().cpu()


def _write_hf(model, tokenizer, folder: Path, spec: ExportStage) -> None:
    hf.plain_model(model, getattr(torch, spec.dtype)).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _write_gguf(model, tokenizer, src: Path, folder: Path, spec: ExportStage) -> None:
    problem = gguf.supports(model.config)
    if not type(model).__name__.endswith("ForCausalLM"):
        problem = f"GGUF holds causal language models (llama.cpp); this folder holds a {type(model).__name__}"
    if problem:
        raise TrainoptError(f"{src}: {problem}")
    if spec.quantize == "q4_k_m" and not llama_cpp.available():
        raise TrainoptError("quantize q4_k_m is made by llama.cpp's own quantizer, and llama-cpp-python is not "
                            "installed: run `make llama-cpp`, or use q4_0 or q8_0")
    if "structure" in read_meta(src) or "quantization" in read_meta(src):
        raise TrainoptError(f"{src} holds pruned shapes or quantized weights in trainopt's format, which GGUF cannot "
                            "describe: export the stage before them")
    gguf.write(model, tokenizer, folder / gguf.MODEL_FILE, "f32" if spec.quantize == "none" else spec.quantize)
    tokenizer.save_pretrained(folder)  # the Hugging Face tokenizer too: `trainopt predict/eval` use it


def _write_onnx(model, src: Path, folder: Path, spec: ExportStage, sample: dict, reference, notes: list[str]) -> None:
    from ..compress.quantize import dynamic, weight_only

    if dynamic.is_quantized(model) or weight_only.is_quantized(model):
        raise TrainoptError(f"{src} holds a quantized model, which torch.onnx cannot export: export the stage before "
                            "the quantization, with quantize: int8 (onnxruntime's own int8)")
    config = model.config
    path = folder / onnx.MODEL_FILE
    raw = folder / "raw.onnx"
    onnx.export(model, sample, raw, spec.opset)
    current = raw
    if spec.optimize and spec.quantize == "none":  # int8: the unfused graph quantizes into the faster model
        fused = folder / "fused.onnx"
        if onnx.optimize(raw, fused, config.model_type):
            diff = float((_logits(onnx.OrtModel(fused, config), sample) - reference).abs().max())
            if diff <= spec.tolerance:
                current = fused
            else:
                notes.append(f"onnxruntime's fused graph differs by {diff:.3g} from the model: exported unfused")
        else:
            notes.append(f"no onnxruntime graph fusions for {config.model_type}: exported unfused")
    if spec.quantize == "int8":
        onnx.quantize_int8(current, path)
    else:
        os.replace(current, path)
    for extra in (raw, folder / "fused.onnx"):
        extra.unlink(missing_ok=True)


def _side_files(src: Path, folder: Path, model, tokenizer, meta: dict) -> None:
    """The tokenizer, config.json (the source's, for its labels and shapes; the model's own for an adapter folder,
    which has none) and trainopt.json with the export's format."""
    if not (folder / "tokenizer_config.json").exists():
        tokenizer.save_pretrained(folder)
    if not (folder / "config.json").exists():
        if (src / "config.json").is_file():
            shutil.copy2(src / "config.json", folder / "config.json")
        else:
            model.config.save_pretrained(folder)
    dropped = ("lora",) if meta["export"]["format"] == "onnx" else ("structure", "quantization", "lora")
    meta = {k: v for k, v in meta.items() if k not in dropped}  # the export is merged, and plain where it can be
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))


def _runtime_name(runtime) -> str:
    if isinstance(runtime, onnx.OrtModel):
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__} (CPU)"
    if isinstance(runtime, llama_cpp.LlamaCppModel):
        return runtime.describe()
    import transformers

    if getattr(runtime, "runtime_name", None):  # transformers' GGUF loader (export/gguf.py)
        return runtime.runtime_name
    return f"transformers {transformers.__version__} (plain from_pretrained)"


def _params(runtime, folder: Path) -> tuple[int, int]:
    if isinstance(runtime, onnx.OrtModel):
        return onnx.count(folder / onnx.MODEL_FILE)
    if (folder / gguf.MODEL_FILE).is_file():
        return gguf.count(folder / gguf.MODEL_FILE)
    from ..artifacts import count_params

    return count_params(runtime)
