"""Pruning: zero (or remove) the weights that matter least, then recover, and report what it bought.

Methods (`method:`), all on the Linear layers inside the transformer blocks unless `embeddings:` /
`classifier:` widen the set:
  magnitude   one-shot |w| ranking, one global threshold or per layer; `pattern: "2:4"` keeps the 2 largest
              of every 4 consecutive input weights (NVIDIA's semi-structured sparsity)
  gradual     magnitude pruning during fine-tuning on Zhu & Gupta's cubic schedule (masks updated every N
              steps, never un-pruned); the best-weights bookkeeping only starts once the target is reached
  wanda       Sun et al. 2023: score |w_ij|·‖x_j‖₂ over calibration inputs, ranked within each output row
              (unstructured or 2:4) — no retraining needed for LLMs
  structured  attention heads and FFN neurons ranked by first-order Taylor importance |Σ w·∂L/∂w| over
              calibration batches (or weight magnitude) and removed by slicing the Linear layers: the model
              physically shrinks (see blocks.py for how the shapes are saved and reloaded)
Masks are held by `torch.nn.utils.prune` (weight_orig × weight_mask, re-applied on every forward, so the
optimizer never revives a pruned weight); we compute the masks, it keeps them. Before saving, the masks are
baked into plain weights. An optional `train:` block fine-tunes afterwards with the masks fixed (recovery),
optionally distilling from the unpruned model (`distill:` loss weights as in a distill stage).
2:4 on CUDA: PyTorch's semi-structured sparse tensors replace the Linear weights and the stage times them
against the same model dense, both in bf16, so that `accelerated` is only claimed where a kernel is faster.
"""

from __future__ import annotations

import copy
import json
import time

import torch

from ... import measure
from ...artifacts import load_saved
from ...compare import ACCELERATED_MIN_SPEEDUP
from ...results import Outcome
from ...train.loop import train
from ...train.setup import AUTOCAST, resolve_precision
from ...train.spec import TrainSettings, as_train_stage
from ..distill.losses import Projections, make_loss, teacher_logits
from .kernels import best_sparse_speedup, time_sparse_kernels
from .masks import (attach_masks, bake, calibration_batches, check_pattern, cubic_sparsity, current_scores,
                    input_sq_norms, masks_from_scores, oriented, sparsity_report, targets)
from .spec import PruneStage
from .structured import apply_plan, plan_structure


# --------------------------------------------------------------------------------------------- the stage
def _recovery_loss(teacher, stage: PruneStage, data, ctx, settings, index: int):
    """The distillation loss from the unpruned model (None: the plain task loss)."""
    if stage.distill is None:
        return None, 0.0
    task, device = ctx.recipe.task, ctx.device
    w = stage.distill
    if w.attention:  # (pruned heads with an attention loss are refused by checks.py before any work)
        teacher.set_attn_implementation("eager")
    n = teacher.config.num_hidden_layers
    hidden = teacher.config.hidden_size
    projections = Projections(n, hidden, hidden) if w.hidden else None
    cache, cache_s = None, 0.0
    if task == "classification" and w.kd and not w.hidden and not w.attention:
        t0 = time.perf_counter()
        cache = teacher_logits(teacher, data.train, device, settings.eval_batch_size,
                               AUTOCAST[resolve_precision(settings.precision, device)])
        cache_s = time.perf_counter() - t0
    return make_loss(teacher, w, task, list(range(n)), projections, cache), cache_s


def _teacher(stage: PruneStage, model, ctx):
    """The model recovery distils from: an earlier stage's (teacher_stage) or the unpruned model itself."""
    if stage.teacher_stage is not None:  # e.g. pruning during fine-tuning from the pretrained model
        teacher, _, _ = load_saved(ctx.run_dir / "stages" / stage.teacher_stage / "model", ctx.recipe.task)
        teacher.to(ctx.device)
    elif stage.distill is not None:
        teacher = copy.deepcopy(model)
    else:
        return None
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _structured(model, data, stage: PruneStage, ctx, stage_dir, index: int, calib_bs: int):
    """Remove heads and FFN neurons (the plan is saved, so that a resumed run rebuilds exactly the same shapes)."""
    plan_file = stage_dir / "structure_plan.json"
    if plan_file.is_file():
        plan = json.loads(plan_file.read_text())
    else:
        batches = calibration_batches(data, stage.calibration_batches, calib_bs, ctx.recipe.run.seed, ctx.device)
        plan = plan_structure(model, stage, batches, ctx.recipe.task, index)
        tmp = plan_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(plan))
        tmp.replace(plan_file)
    before = sum(p.numel() for p in model.parameters())
    apply_plan(model, plan)
    info = {"method": "structured", "importance": stage.structured.importance,
            "target_heads_removed": stage.structured.heads, "target_ffn_removed": stage.structured.ffn,
            "heads_kept": [len(h) for h in plan["heads"]] if plan["heads"] else None,
            "ffn_kept": [len(f) for f in plan["ffn"]],
            "params_before": before, "params_after": sum(p.numel() for p in model.parameters())}
    return [], info, None, None


def _unstructured(model, data, stage: PruneStage, ctx, stage_dir, index: int, calib_bs: int):
    """Magnitude, Wanda or gradual masks on the target Linears: (modules, info, after_step, best_from_step)."""
    info: dict = {"method": stage.method, "pattern": stage.pattern, "target_sparsity": stage.sparsity}
    modules = targets(model, stage, index)
    check_pattern(modules, stage.pattern, index)
    weights = [oriented(m, m.weight.detach().abs().float()) for _, m in modules]
    after_step = best_from = None
    if stage.method == "wanda":
        batches = calibration_batches(data, stage.calibration_batches, calib_bs, ctx.recipe.run.seed, ctx.device)
        norms = input_sq_norms(model, modules, batches)
        scores = [w * n.sqrt().to(w.device)[None, :] for w, n in zip(weights, norms)]
        masks = masks_from_scores(scores, stage.sparsity, stage.pattern, "row")
    elif stage.method == "magnitude":
        masks = masks_from_scores(weights, stage.sparsity, stage.pattern, stage.scope)
    else:  # gradual: start at the schedule's initial sparsity, then tighten every `every` steps
        masks, after_step, best_from = _gradual(stage, modules, weights)
        info["schedule"] = stage.schedule.model_dump()
    attach_masks(modules, masks)
    return modules, info, after_step, best_from


def _gradual(stage: PruneStage, modules, weights):
    """Zhu & Gupta's schedule: the initial masks, the hook that tightens them, and the first step that may count as
    best (once the target sparsity is reached)."""
    sched = stage.schedule
    masks = masks_from_scores(weights, sched.initial_sparsity, "unstructured", stage.scope) \
        if sched.initial_sparsity else [torch.ones_like(w, dtype=torch.bool) for w in weights]

    def bounds(total):
        t0 = int(round(sched.start * total))
        return t0, max(t0 + 1, int(round(sched.end * total)))

    def after_step(step, total):
        t0, t1 = bounds(total)
        if step < t0 or step > t1 or ((step - t0) % sched.every and step != t1):
            return
        target = cubic_sparsity(step, t0, t1, sched.initial_sparsity, stage.sparsity)
        new = masks_from_scores(current_scores(modules), target, "unstructured", stage.scope)
        with torch.no_grad():
            for (_, m), mask in zip(modules, new):
                m.weight_mask.copy_(oriented(m, mask).to(m.weight_mask.dtype))

    def best_from(total):
        return bounds(total)[1]

    return masks, after_step, best_from


METHODS = {"structured": _structured, "magnitude": _unstructured, "wanda": _unstructured, "gradual": _unstructured}


def run(model, data, stage: PruneStage, ctx, stage_dir):
    """Prune by `stage.method`, recover (fine-tune or distil) where a `train:` block asks, bake the masks, and time
    2:4 sparse kernels on CUDA."""
    task, device, index = ctx.recipe.task, ctx.device, ctx.recipe.stage_index(stage.name)
    start = time.perf_counter()
    model.to(device)
    teacher = _teacher(stage, model, ctx)
    settings = None
    if stage.train is not None or stage.method == "gradual":
        settings = as_train_stage(stage.train or TrainSettings(), stage.name)
    calib_bs = settings.batch_size if settings else (8 if task == "causal_lm" else 32)
    modules, info, after_step, best_from = METHODS[stage.method](model, data, stage, ctx, stage_dir, index, calib_bs)
    prune_s = time.perf_counter() - start

    claims = "shape" if stage.method == "structured" else "mask"
    if settings is not None:
        loss_fn, cache_s = _recovery_loss(teacher, stage, data, ctx, settings, index)
        summary = train(model, data, settings, ctx, stage_dir, loss_fn=loss_fn, after_step=after_step,
                        best_from_step=best_from)
        summary["teacher_cache_s"] = round(cache_s, 2)
        outcome = Outcome.trained(summary, effect="compressed", extra_wall_s=prune_s + cache_s, claims=claims)
        info["recovery"] = (f"distill from stage {stage.teacher_stage}" if stage.teacher_stage else
                            "distill from the unpruned model" if stage.distill else "fine-tune")
    else:
        outcome = Outcome(claims=claims, cost={"wall_s": round(prune_s, 2), "tokens_per_s": None, "mfu": None,
                                               "peak_mem_bytes": measure.peak_memory_bytes(device)})
    bake(modules)
    model.eval()
    if modules:
        per_layer, achieved = sparsity_report(modules)
        info.update({"achieved_sparsity": achieved, "pruned_modules": len(modules), "per_layer": per_layer})
        if stage.pattern == "2:4" and stage.sparse_kernels:
            kernels = time_sparse_kernels(model, modules, ctx)
            info["sparse_kernels"] = kernels
            best = best_sparse_speedup(kernels, max(ctx.recipe.measure.batch_sizes))
            if kernels.get("measured") and best >= ACCELERATED_MIN_SPEEDUP:
                outcome.effect = "accelerated"  # the stage timed a faster kernel of its own
    info["prune_s"] = round(prune_s, 2)
    outcome.details["pruning"] = info
    return model, outcome

