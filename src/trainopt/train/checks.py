"""The checks made before work starts on every training a recipe runs (a train stage, or the training inside a
prune / distill / quantize stage): options that are each valid but not together, or not on this machine. Light on
purpose (torch and pydantic only): `trainopt check` and the `--nproc` launcher run it without the training code."""

from __future__ import annotations

import torch

from ..errors import RecipeError
from ..evaluate import METRICS
from .fa4 import why_unavailable


def check_training(key: str, settings, task: str, device: torch.device, plain: bool) -> None:
    """`key`: where the settings sit (`stages.<i>` or `stages.<i>.train`); `plain`: a train stage, whose loop may
    take a fused LM loss and FSDP2 (the trainings inside other stages bring their own losses and modules)."""
    if settings.precision == "fp16" and device.type != "cuda":
        raise RecipeError(f"{key}.precision", "fp16 training needs a CUDA device (GradScaler)",
                          "use bf16 or fp32 on CPU")
    if settings.metric is not None and settings.metric not in METRICS[task]:
        raise RecipeError(f"{key}.metric", f"'{settings.metric}' is not a {task} metric",
                          f"use one of {list(METRICS[task])}")
    for name, value, default in (("lm_loss", settings.lm_loss, "full"), ("parallel", settings.parallel, "ddp")):
        if value != default and not plain:  # those stages bring their own losses, masks and modules
            raise RecipeError(f"{key}.{name}", f"{name}: {value} applies to train stages only",
                              f"remove it (or set {default}) here")
    if settings.lm_loss != "full" and task != "causal_lm":
        raise RecipeError(f"{key}.lm_loss", "the fused LM loss applies to causal_lm models", "set it to full")
    if settings.lm_loss_vocab_multiple != 1 and settings.lm_loss != "chunked":
        raise RecipeError(f"{key}.lm_loss_vocab_multiple", "vocabulary padding applies to lm_loss: chunked",
                          "set lm_loss: chunked (or remove lm_loss_vocab_multiple)")
    if settings.sdpa_backend in ("cudnn", "efficient") and device.type != "cuda":
        raise RecipeError(f"{key}.sdpa_backend", f"the {settings.sdpa_backend} attention kernel runs on CUDA only",
                          "use auto, flash or math on a CPU")
    if settings.sdpa_backend in ("flash", "cudnn") and device.type == "cuda" and settings.precision == "fp32":
        raise RecipeError(f"{key}.sdpa_backend", f"the {settings.sdpa_backend} kernel takes fp16/bf16 inputs on CUDA",
                          "set precision: bf16 (or sdpa_backend: efficient or math)")
    if settings.sdpa_backend != "auto" and settings.attention in ("eager", "flash_attention_2", "fa4"):
        raise RecipeError(f"{key}.sdpa_backend", f"sdpa_backend picks a kernel of attention: sdpa, not of "
                          f"attention: {settings.attention}", "set attention: sdpa (or remove sdpa_backend)")
    if settings.attention == "sdpa_causal" and task != "causal_lm":
        raise RecipeError(f"{key}.attention", "sdpa_causal applies to causal_lm models",
                          "use attention: sdpa")
    if settings.attention == "fa4":
        why = why_unavailable(device)
        if why is None and task != "causal_lm":
            why = "it runs unpadded causal batches only (causal_lm)"
        if why is None and settings.precision == "fp32":
            why = "its kernels take fp16/bf16 activations"
        if why:
            raise RecipeError(f"{key}.attention", f"attention: fa4 cannot run here: {why}",
                              "use attention: sdpa" + (" (or precision: bf16)" if "bf16" in why else ""))
    if settings.lm_loss == "liger" and device.type != "cuda":
        raise RecipeError(f"{key}.lm_loss", "liger (Triton) needs a CUDA device", "use chunked on CPU")
    if settings.parallel == "fsdp" and (settings.ddp_comm != "fp32" or settings.ddp_bucket_mb != 25.0):
        raise RecipeError(f"{key}.ddp_comm" if settings.ddp_comm != "fp32" else f"{key}.ddp_bucket_mb",
                          "DDP's gradient buckets and compression do not apply to parallel: fsdp",
                          "remove the ddp_ key (or use parallel: ddp)")
    if settings.parallel != "fsdp" and not settings.fsdp_reshard:
        raise RecipeError(f"{key}.fsdp_reshard", "fsdp_reshard applies to parallel: fsdp",
                          "remove it (or set parallel: fsdp)")
    if settings.parallel == "fsdp" and settings.precision == "fp16":
        raise RecipeError(f"{key}.precision", "fp16 (GradScaler) is not supported with parallel: fsdp",
                          "use bf16 (or parallel: ddp)")
    if settings.label_smoothing and task != "classification":
        raise RecipeError(f"{key}.label_smoothing", "label smoothing applies to classification only",
                          "remove it or set it to 0")
