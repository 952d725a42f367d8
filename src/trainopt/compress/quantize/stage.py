"""The `quantize` stage: dynamic int8 (dynamic.py, optionally after QAT or SmoothQuant-style smoothing) or torchao
weight-only int8/int4 (weight_only.py)."""

from __future__ import annotations

import time

import torch

from ...results import Outcome
from ...train.loop import train
from ...train.spec import as_train_stage
from . import dynamic, weight_only
from .spec import QuantizeStage


def run(model, data, stage: QuantizeStage, ctx, stage_dir):
    """Quantize the model (after QAT / smoothing where asked); the runner measures it on `measure_device`."""
    start = time.perf_counter()
    if stage.method != "dynamic_int8":  # torchao weight-only (weight_only.py), on the run's device
        info = weight_only.apply(model, stage.method, stage.group_size, stage.embeddings, stage.skip, ctx.device,
                                 stage.int4_qparams, stage.embedding_bits, stage.embedding_group_size)
        quantization = {**info, "weights": f"{stage.method[12:]} weight-only (torchao)",
                        "activations": "floating point", "weight_bytes_in_memory": weight_only.weight_bytes(model)}
        return model, Outcome(measure_device=ctx.device.type, cost=_cost(start), details={
            "quantization": quantization}, saved_meta={"quantization": quantization})
    modules = dynamic.plan(model, stage.embeddings, stage.skip, stage.embedding_bits, stage.embedding_group_size,
                           stage.int4_qparams)
    smoothed = 0
    if stage.smooth is not None:
        model.cpu().eval()
        split = data.train
        idx = list(range(min(len(split), stage.smooth.calibration_batches * 4)))
        batches = [{"input_ids": split.collate(idx[i: i + 4])["input_ids"]} for i in range(0, len(idx), 4)]
        smoothed = dynamic.smooth(model, batches, stage.smooth.alpha)
    outcome = None
    if stage.qat is not None:
        dynamic.insert_fake_quant(model, modules["linear"])
        summary = train(model, data, as_train_stage(stage.qat, stage.name), ctx, stage_dir)
        dynamic.remove_fake_quant(model, modules["linear"])
        outcome = Outcome.trained(summary, effect="compressed")
    model = dynamic.convert(model, modules)
    outcome = outcome or Outcome(cost=_cost(start))
    outcome.measure_device = "cpu"  # the dynamic int8 kernels run on the CPU: measure them there
    quantization = {"method": stage.method, "qat": stage.qat is not None,
                    "linear_modules": len(modules["linear"]), "embeddings": modules["embedding"],
                    "int4_embeddings": modules.get("embedding4", []),
                    "embedding_group_size": modules.get("embedding4_group_size"),
                    "int4_qparams": modules.get("embedding4_qparams"),
                    "weights": "int8 per output channel (symmetric); embeddings " + (
                        f"int4 in groups of {stage.embedding_group_size}" if modules.get("embedding4")
                        else "8-bit per row"),
                    "activations": "int8 dynamic, per tensor", "backend": torch.backends.quantized.engine,
                    "smoothed_linears": smoothed,
                    "smooth_alpha": stage.smooth.alpha if stage.smooth is not None else None}
    outcome.details["quantization"] = quantization
    outcome.saved_meta["quantization"] = quantization
    return model, outcome


def _cost(start: float) -> dict:
    return {"wall_s": round(time.perf_counter() - start, 2), "tokens_per_s": None, "mfu": None,
            "peak_mem_bytes": None}
