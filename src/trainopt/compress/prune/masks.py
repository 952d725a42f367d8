"""Unstructured and 2:4 masks: which Linears are pruned, magnitude / Wanda scores, thresholds, the cubic schedule of
gradual pruning, and calibration inputs. Masks are held by `torch.nn.utils.prune` (weight_orig × weight_mask)."""

from __future__ import annotations

import torch
import torch.nn.utils.prune as tprune

from ...errors import RecipeError
from ...evaluate import model_inputs
from ...specbase import stage_key
from ..blocks import find_blocks
from .spec import PruneStage


# ------------------------------------------------------------------------------------------- targets
def _is_conv1d(m) -> bool:
    return type(m).__name__ == "Conv1D"  # GPT-2's Linear with the weight stored (in, out)


def oriented(m, t: torch.Tensor) -> torch.Tensor:
    """A weight-shaped tensor as (out, in) rows, whatever the module stores (and back: the same transpose)."""
    return t.t() if _is_conv1d(m) else t


def targets(model: torch.nn.Module, stage: PruneStage, index: int) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every module whose weight is pruned, each weight once (tied weights)."""
    _, _, blocks = find_blocks(model)
    in_blocks = {id(m) for m in blocks.modules()}
    out, seen = [], set()
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, m in model.named_modules():
        if any(s and s in name for s in stage.skip) or not (
                isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) or _is_conv1d(m)):
            continue
        if isinstance(m, torch.nn.Embedding):
            wanted = stage.embeddings
        elif id(m) in in_blocks:
            wanted = True
        else:  # classifier / pooler / LM head
            wanted = stage.classifier
        if m is output and output.weight is model.get_input_embeddings().weight:
            wanted = stage.embeddings or stage.classifier  # tied: pruned once, through the embedding
            if not wanted or id(output.weight) in seen:
                continue
        if wanted and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out.append((name, m))
    if not out:
        raise RecipeError(stage_key(index, "skip"), "nothing left to prune", "skip fewer modules")
    return out


# --------------------------------------------------------------------------------------------- masks
def n_m_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the n highest scores of every m consecutive inputs of each row (2:4 semi-structured)."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(n, dim=-1).indices, True)
    return keep.reshape(rows, cols)


def threshold_mask(scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """One threshold over all the score tensors: the `sparsity` share with the lowest scores goes."""
    flat = torch.cat([s.reshape(-1) for s in scores])
    k = int(round(sparsity * flat.numel()))
    if k == 0:
        return [torch.ones_like(s, dtype=torch.bool) for s in scores]
    threshold = flat.kthvalue(k).values
    return [s > threshold for s in scores]


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Within each output row, drop the `sparsity` share with the lowest scores (Wanda's comparison group)."""
    k = int(round(sparsity * scores.shape[1]))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        keep.scatter_(1, scores.argsort(dim=1)[:, :k], False)
    return keep


def masks_from_scores(scores: list[torch.Tensor], sparsity: float, pattern: str, scope: str) -> list[torch.Tensor]:
    if pattern == "2:4":
        return [n_m_mask(s) for s in scores]
    if scope == "global":
        return threshold_mask(scores, sparsity)
    if scope == "row":
        return [row_mask(s, sparsity) for s in scores]
    return [threshold_mask([s], sparsity)[0] for s in scores]


def check_pattern(modules, pattern: str, index: int) -> None:
    if pattern != "2:4":
        return
    bad = [(n, oriented(m, m.weight).shape[1]) for n, m in modules if oriented(m, m.weight).shape[1] % 4]
    if bad:
        raise RecipeError(stage_key(index, "pattern"), f"2:4 needs input widths divisible by 4; {bad[0][0]} has "
                          f"{bad[0][1]}", "skip that module (skip: [...]) or use pattern: unstructured")


def attach_masks(modules, masks) -> None:
    for (_, m), mask in zip(modules, masks):
        tprune.custom_from_mask(m, "weight", oriented(m, mask).to(m.weight.device))


def current_scores(modules) -> list[torch.Tensor]:
    """|w| of the surviving weights, 0 where already pruned (so a pruned weight never comes back)."""
    return [oriented(m, (m.weight_orig.detach() * m.weight_mask).abs().float()) for _, m in modules]


def bake(modules) -> None:
    """Replace weight_orig × weight_mask by a plain weight holding the zeros."""
    for _, m in modules:
        if tprune.is_pruned(m):
            tprune.remove(m, "weight")


def sparsity_report(modules) -> tuple[dict[str, float], float]:
    per, zeros, total = {}, 0, 0
    for name, m in modules:
        w = m.weight.detach()
        z = int((w == 0).sum())
        per[name] = round(z / w.numel(), 4)
        zeros, total = zeros + z, total + w.numel()
    return per, round(zeros / total, 4)


def cubic_sparsity(step: int, t0: int, t1: int, s_i: float, s_f: float) -> float:
    """Zhu & Gupta 2017, eq. 1."""
    if step <= t0:
        return s_i
    if step >= t1:
        return s_f
    return s_f + (s_i - s_f) * (1.0 - (step - t0) / (t1 - t0)) ** 3


# ------------------------------------------------------------------------------------ calibration data
def calibration_batches(data, n: int, batch_size: int, seed: int, device) -> list[dict]:
    split = data.train
    idx = split.batches(batch_size, seed, epoch=10_000, shuffle=True)[:n]  # not an epoch that training uses
    return [{k: v.to(device) for k, v in split.collate(i).items()} for i in idx]


@torch.no_grad()
def input_sq_norms(model, modules, batches) -> list[torch.Tensor]:
    """Σ x_j² over the real (non-padding) calibration tokens entering each module (Wanda's ‖x_j‖₂²)."""
    sums = [None] * len(modules)
    mask_now: dict = {}

    def hook_for(i):
        def hook(module, args):
            x = args[0].detach().float()
            x = x.reshape(-1, x.shape[-1])
            keep = mask_now.get("flat")
            if keep is not None and keep.numel() == x.shape[0]:
                x = x[keep]
            s = (x * x).sum(0)
            sums[i] = s if sums[i] is None else sums[i] + s
        return hook

    hooks = [m.register_forward_pre_hook(hook_for(i)) for i, (_, m) in enumerate(modules)]
    try:
        for batch in batches:
            am = batch.get("attention_mask")
            mask_now["flat"] = am.reshape(-1).bool() if am is not None else None
            model(**model_inputs(batch))
    finally:
        for h in hooks:
            h.remove()
    return sums


