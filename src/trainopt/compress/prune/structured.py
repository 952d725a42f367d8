"""Structured pruning: attention heads and FFN neurons ranked by Taylor importance (or magnitude) and removed by
slicing the Linear layers, so that the model physically shrinks (compress/blocks.py saves and reloads the shapes)."""

from __future__ import annotations

import torch

from ...errors import RecipeError
from ...specbase import stage_key
from ...train.loss import task_loss
from ..blocks import find_blocks, head_dim, layout, shrink_block
from .spec import PruneStage


# -------------------------------------------------------------------------------------------- structured
def structure_scores(model, batches, task: str, importance: str) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
    """Per block: (head scores or None, FFN-neuron scores). Taylor: Σ over batches of |Σ_group w·∂L/∂w|."""
    lay = layout(model)
    _, _, blocks = find_blocks(model)
    hd = head_dim(model)

    def groups(block, grad: bool):
        def t(lin):
            return (lin.weight * lin.weight.grad) if grad else lin.weight.detach() ** 2

        def tb(lin):
            if lin.bias is None:
                return 0.0
            return (lin.bias * lin.bias.grad) if grad else lin.bias.detach() ** 2

        heads = None
        if "q" in lay:
            per_row = sum(t(block.get_submodule(lay[p])).sum(1) + tb(block.get_submodule(lay[p]))
                          for p in ("q", "k", "v"))
            per_row = per_row + t(block.get_submodule(lay["o"])).sum(0)
            heads = per_row.reshape(-1, hd).sum(1)
        per_neuron = sum(t(block.get_submodule(p)).sum(1) + tb(block.get_submodule(p)) for p in lay["up"])
        per_neuron = per_neuron + t(block.get_submodule(lay["down"])).sum(0)
        return heads, per_neuron

    if importance == "magnitude":
        with torch.no_grad():
            return [tuple(None if g is None else g.sqrt() for g in groups(b, False)) for b in blocks]
    loss_fn = task_loss(task)
    was_training = model.training
    model.eval()  # no dropout: the same calibration gives the same ranking (and resumes rebuild it exactly)
    totals = [(None, None)] * len(blocks)
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch, batch["input_ids"].shape[0]).backward()
        with torch.no_grad():
            for i, b in enumerate(blocks):
                h, f = groups(b, True)
                h0, f0 = totals[i]
                h = None if h is None else h.abs()
                totals[i] = (None if h is None else (h if h0 is None else h0 + h), f.abs() if f0 is None else f0 + f.abs())
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return totals


def choose(scores: list[torch.Tensor], fraction: float, same_per_layer: bool) -> list[list[int]]:
    """Indices to keep in each layer: the top (1 - fraction) per layer, or by one global ranking (≥ 1 each)."""
    if same_per_layer:
        keep_n = max(1, int(round(scores[0].numel() * (1.0 - fraction))))
        return [sorted(s.topk(keep_n).indices.tolist()) for s in scores]
    normed = [s / (s.sum() + 1e-12) for s in scores]  # layers differ in scale; compare shares within a layer
    flat = torch.cat(normed)
    keep_total = max(len(scores), int(round(flat.numel() * (1.0 - fraction))))
    threshold = flat.topk(keep_total).values[-1]
    out = []
    for s in normed:
        idx = (s >= threshold).nonzero().flatten().tolist()
        out.append(sorted(idx) if idx else [int(s.argmax())])
    return out


def check_architecture(model, stage: PruneStage, index: int) -> dict:
    """The model's block layout, or the recipe error for an architecture structured pruning cannot shrink (run on the
    meta-device model before any work, and again on the loaded model)."""
    lay = layout(model)
    if lay is None:
        raise RecipeError(stage_key(index, "method"), f"structured pruning knows BERT- and Llama-style blocks, not "
                          f"{type(model).__name__}", "use method: magnitude or wanda")
    if stage.structured.heads and "q" not in lay:
        raise RecipeError(stage_key(index, "structured.heads"), f"head pruning is not supported for "
                          f"{model.config.model_type} (grouped key/value heads)", "prune ffn only (heads: 0)")
    return lay


def plan_structure(model, stage: PruneStage, batches, task: str, index: int) -> dict:
    spec = stage.structured
    check_architecture(model, stage, index)
    scores = structure_scores(model, batches, task, spec.importance)
    plan = {"heads": None, "ffn": choose([s[1] for s in scores], spec.ffn, spec.same_per_layer)}
    if spec.heads:
        plan["heads"] = choose([s[0] for s in scores], spec.heads, spec.same_per_layer)
    return plan


def apply_plan(model, plan: dict) -> None:
    lay = layout(model)
    _, _, blocks = find_blocks(model)
    hd = head_dim(model)
    for i, block in enumerate(blocks):
        shrink_block(block, lay, hd, plan["heads"][i] if plan["heads"] else None, plan["ffn"][i])
    widths = {len(k) for k in plan["ffn"]}
    if len(widths) == 1:  # the same width everywhere: the config says it, plain transformers can load the FFN
        model.config.intermediate_size = widths.pop()


