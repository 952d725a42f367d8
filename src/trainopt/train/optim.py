"""Optimizers with parameter groups (no weight decay on biases and norms) and warmup schedules."""

from __future__ import annotations

import math

import torch

from .spec import OptimizerSpec, ScheduleSpec


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (Linear/Embedding weights); never biases or normalisation weights (1-D tensors)."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, spec: OptimizerSpec, fused: bool | None = None) -> torch.optim.Optimizer:
    groups = param_groups(model, spec.weight_decay)
    if spec.name == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov)
    if spec.fused is not None:  # the recipe decides; else the caller's default (fused on CUDA)
        fused = spec.fused
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps, **kwargs)


def warmup_steps(spec: ScheduleSpec, total_steps: int) -> int:
    if spec.warmup_steps is not None:
        return min(spec.warmup_steps, total_steps)
    return int(round((spec.warmup_ratio or 0.0) * total_steps))


def lr_multiplier(step: int, spec: ScheduleSpec, total_steps: int) -> float:
    """LR factor for optimizer step `step` (0-based): linear warmup, then constant / linear / cosine decay."""
    warm = warmup_steps(spec, total_steps)
    if step < warm:
        return (step + 1) / (warm + 1)
    if spec.name == "constant":
        return 1.0
    progress = (step - warm) / max(1, total_steps - warm)
    progress = min(max(progress, 0.0), 1.0)
    floor = spec.min_lr_ratio
    if spec.name == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, spec: ScheduleSpec, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, spec, total_steps))
