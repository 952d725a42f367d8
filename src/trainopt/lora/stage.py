"""The `lora` stage: wrap the model in PEFT's LoRA adapters, train only them with train/loop.py, write the adapter as
a standard PEFT folder (adapter_config.json + adapter_model.safetensors), and give on either the merged model (a
plain HF model, `merge: true`) or the adapted one (`merge: false`: the stage's folder is the adapter alone).

Why PEFT and not a hand-written adapter: its folders are what `peft`, transformers' `load_adapter`, vLLM and TGI load;
trainopt adds the training loop, the measurements and the report around it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..results import Outcome
from ..train.loop import train
from ..train.monitor import console
from .spec import LoraStage

ADAPTER_DIR = "adapter"  # under the stage's folder


def peft_config(stage: LoraStage, task: str):
    from peft import LoraConfig, TaskType

    targets = stage.target_modules if stage.target_modules == "all-linear" else list(stage.target_modules)
    return LoraConfig(r=stage.rank, lora_alpha=stage.alpha, lora_dropout=stage.dropout, target_modules=targets,
                      use_dora=stage.dora, use_rslora=stage.rslora, bias="none",
                      task_type=TaskType.CAUSAL_LM if task == "causal_lm" else TaskType.SEQ_CLS)


def wrap(model, stage: LoraStage, task: str, seed: int):
    """The model with LoRA adapters (A: PEFT's Kaiming init, seeded; B: zeros, so the start equals the model)."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(model, peft_config(stage, task))


def run(model, data, stage: LoraStage, ctx, stage_dir: Path):
    task = ctx.recipe.task
    quantized = _quantize(model, stage, ctx.device)
    adapted = wrap(model, stage, task, ctx.recipe.run.seed)
    trainable, total = adapted.get_nb_trainable_parameters()
    console.print(f"LoRA r={stage.rank}, alpha={stage.alpha:g}: {trainable:,} of {total:,} parameters train "
                  f"({trainable / total:.2%})" + (f"; base in {stage.quantize_base} ({quantized['layers']} Linear "
                                                  "layers)" if quantized else ""))
    originals = _frozen_to_autocast_dtype(adapted, stage, ctx.device)
    summary = train(adapted, data, stage, ctx, stage_dir, trainable_only=True)
    for p, original in originals:  # the base's own fp32 weights back, for merging and saving
        p.data = original.to(p.device)
    base = ctx.parent_dir
    main = ctx.dist is None or ctx.dist.is_main  # under torchrun rank 0 alone writes (the ranks' adapters are equal)
    adapter_dir = save_adapter(adapted, stage_dir / ADAPTER_DIR, base) if main else stage_dir / ADAPTER_DIR
    if quantized and stage.merge:  # merged into the dequantised base: the merged model is the one that trained
        from .quantize import dequantized

        adapted = dequantized(adapted)
    info = {"rank": stage.rank, "alpha": stage.alpha, "dropout": stage.dropout, "dora": stage.dora,
            "rslora": stage.rslora,
            "target_modules": sorted({t.split(".")[-1] for t in adapted.peft_config["default"].target_modules}),
            "trainable_params": trainable, "total_params": total, "trainable_fraction": round(trainable / total, 5),
            "adapter": os.path.relpath(adapter_dir, ctx.run_dir),
            "adapter_bytes": (adapter_dir / "adapter_model.safetensors").stat().st_size if main else None,
            "base": str(base) if base is not None else None, "merged": stage.merge,
            "quantize_base": stage.quantize_base}
    if quantized:
        info.update(double_quant=stage.double_quant, quantized_layers=quantized["layers"],
                    quantized_params=quantized["params"], quantized_weight_bytes=quantized["weight_bytes"])
    if stage.merge:
        model = adapted.merge_and_unload()
        saved_meta = {}
    else:
        model = adapted
        saved_meta = {"lora": {"base": str(base)}}
        if quantized:  # the loader quantises the base the same way before putting the adapter on it
            saved_meta["lora"]["quantize_base"] = {"quant_type": stage.quantize_base,
                                                   "double_quant": stage.double_quant}
    model.eval()
    return model, Outcome.trained(summary, details={"lora": info}, saved_meta=saved_meta)


def _quantize(model, stage: LoraStage, device) -> dict | None:
    """QLoRA: the base's Linear layers to 4-bit on the training device (computing in the autocast dtype)."""
    if stage.quantize_base == "none":
        return None
    from ..train.setup import AUTOCAST, resolve_precision
    from .quantize import quantize_base

    compute = AUTOCAST[resolve_precision(stage.precision, device)] or torch.float32
    return quantize_base(model, stage.quantize_base, stage.double_quant, compute, device)


def _frozen_to_autocast_dtype(adapted, stage: LoraStage, device) -> list:
    """Under bf16/fp16 autocast every frozen Linear weight is read by its matmul in the autocast dtype anyway, so it
    is stored in that dtype while training: the same products (autocast rounds fp32 → bf16 exactly as .to() does),
    half the memory of the frozen base (1B parameters: 2.5 GB instead of 4.9). Weights shared with an embedding (a
    tied LM head) and non-Linear weights (norms) keep their dtype: those change the numerics. Returns the (parameter,
    original fp32 copy on the host) pairs to put back after training."""
    from ..train.setup import AUTOCAST, resolve_precision

    dtype = AUTOCAST[resolve_precision(stage.precision, device)]
    if dtype is None:
        return []
    embeddings = {id(m.weight) for m in adapted.modules() if isinstance(m, torch.nn.Embedding)}
    out = []
    for m in adapted.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, torch.nn.Linear) and not w.requires_grad and w.dtype == torch.float32 \
                and id(w) not in embeddings:
            out.append((w, w.detach().to("cpu", copy=True)))
            w.data = w.data.to(dtype)
    return out


def save_adapter(adapted, out: Path, base: Path | None) -> Path:
    """The adapter as a PEFT folder, written under a temporary name then renamed; its base_model_name_or_path is the
    folder the base model was loaded from (absolute: PEFT resolves it from anywhere)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if base is not None:
        adapted.peft_config["default"].base_model_name_or_path = str(Path(base).resolve())
    adapted.save_pretrained(str(tmp), safe_serialization=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
