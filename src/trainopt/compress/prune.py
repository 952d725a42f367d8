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
import torch.nn.utils.prune as tprune

from ..errors import RecipeError
from ..evaluate import model_inputs
from ..recipe import PruneStage, TrainStage
from ..stages import RunContext, register
from ..train.loop import AUTOCAST, resolve_precision, task_loss, train
from .blocks import find_blocks, head_dim, layout, shrink_block


# ------------------------------------------------------------------------------------------- targets
def _is_conv1d(m) -> bool:
    return type(m).__name__ == "Conv1D"  # GPT-2's Linear with the weight stored (in, out)


def oriented(m, t: torch.Tensor) -> torch.Tensor:
    """A weight-shaped tensor as (out, in) rows, whatever the module stores (and back: the same transpose)."""
    return t.t() if _is_conv1d(m) else t


def targets(model: torch.nn.Module, stage: PruneStage) -> list[tuple[str, torch.nn.Module]]:
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
        raise RecipeError("stages.skip", "nothing left to prune", "skip fewer modules")
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
        raise RecipeError(f"stages.{index}.pattern", f"2:4 needs input widths divisible by 4; {bad[0][0]} has "
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


def plan_structure(model, stage: PruneStage, batches, task: str, index: int) -> dict:
    spec = stage.structured
    lay = layout(model)
    if lay is None:
        raise RecipeError(f"stages.{index}.method", f"structured pruning knows BERT- and Llama-style blocks, not "
                          f"{type(model).__name__}", "use method: magnitude or wanda")
    if spec.heads and "q" not in lay:
        raise RecipeError(f"stages.{index}.structured.heads", f"head pruning is not supported for "
                          f"{model.config.model_type} (grouped key/value heads)", "prune ffn only (heads: 0)")
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


# ----------------------------------------------------------------------------------- 2:4 sparse kernels
def _timings(model, inputs, device, m) -> dict:
    """Eager p50 latencies, CUDA-graph replays where the forward can be captured, and the compiled model replayed
    from graphs (torch.compile's reduce-overhead mode)."""
    from .. import measure

    out = {k: v for k, v in measure.measure_latency(model, inputs, device, m.warmup, m.repeats, m.max_seconds).items()
           if k.startswith("latency_ms_b") and k.endswith("_p50")}
    try:
        out.update(measure.measure_graphed_latency(model, inputs, device, m.warmup, m.repeats, m.max_seconds))
    except (RuntimeError, ValueError) as e:
        out["graph_error"] = str(e).splitlines()[0][:200]
    try:
        out.update(measure.measure_compiled_latency(model, inputs, device, m.warmup, m.repeats, m.max_seconds))
    except Exception as e:  # noqa: BLE001 — a compiler failure (e.g. a tensor subclass it cannot trace) is a result
        out["compiled_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    finally:
        torch._dynamo.reset()  # the next model (dense, then sparse) compiles afresh
    return out


def _convert_subclass(work, names: set[str]) -> tuple[int, list]:
    """PyTorch's semi-structured tensor subclass in place of each named weight: the fallback where cuSPARSELt is
    missing (then the subclass runs CUTLASS, sm_8x only, which has no algorithm ids to search)."""
    from torch.sparse import to_sparse_semi_structured

    converted, errors = 0, []
    for name, mod in work.named_modules():
        if name in names and isinstance(mod, torch.nn.Linear):
            try:
                mod.weight = torch.nn.Parameter(to_sparse_semi_structured(mod.weight.detach()), requires_grad=False)
                converted += 1
            except (RuntimeError, ValueError) as e:
                errors.append(f"{name}: {str(e).splitlines()[0][:120]}")
    return converted, errors


def time_sparse_kernels(model, modules, ctx: RunContext, search_alg: bool = True) -> dict:
    """On CUDA: the same 2:4 model dense vs with its weights run by 2:4 sparse kernels, both bf16, eager, replayed
    from a hand-captured CUDA graph, and compiled with graphs (the last two remove per-call host work such as
    cuSPARSELt's plan set-up). Where cuSPARSELt is available, each Linear becomes a `sparse24.Sparse24Linear` (one
    direct `torch._cslt_sparse_mm` call; with `search_alg`, cuSPARSELt's fastest algorithm at the largest timed
    batch); elsewhere PyTorch's semi-structured tensor subclass is used."""
    inputs, m = ctx.extras.get("measure_inputs"), ctx.recipe.measure
    if ctx.device.type != "cuda":
        return {"measured": False, "reason": "semi-structured sparse kernels run on CUDA only; on "
                f"{ctx.device.type} the 2:4 model runs dense (masked)"}
    if not inputs:
        return {"measured": False, "reason": "sparse kernels not timed: latency measurement is off "
                "(measure.latency: false)"}
    from . import sparse24

    work = copy.deepcopy(model).to(ctx.device, torch.bfloat16).eval()
    dense = _timings(work, inputs, ctx.device, m)
    names = {n for n, _ in modules}
    tokens = max(int(b["input_ids"].numel()) for b in inputs.values())  # rows of the largest timed batch
    direct = sparse24.available(ctx.device)
    if direct:
        conv = sparse24.convert(work, names, search_rows=tokens if search_alg else None)
        converted, errors = conv["converted"], conv["errors"]
    else:
        converted, errors = _convert_subclass(work, names)
    try:
        sparse = _timings(work, inputs, ctx.device, m)
    except (RuntimeError, ValueError) as e:
        return {"measured": False, "reason": f"sparse forward failed: {str(e).splitlines()[0][:200]}",
                "converted": converted}
    out = {"measured": True, "dtype": "bfloat16", "kernel": "cusparselt_direct" if direct else "semi_structured_tensor",
           "converted_linears": converted, "conversion_errors": errors[:5]}
    if direct and search_alg:  # layers on a non-default algorithm (sparse24.search_alg keeps only ids that run)
        out["cusparselt_alg_search"] = {"non_default": conv["non_default_algs"], "for_rows": tokens}
    for key in dense:
        if key in sparse and "latency_ms_b" in key:
            mode = next((p for p in ("graph_", "compiled_") if key.startswith(p)), "")
            b = key.split("latency_ms_")[1][: -len("_p50")]
            out[f"dense_{key}"], out[f"sparse_{key}"] = dense[key], sparse[key]
            out[f"{mode}speedup_{b}"] = round(dense[key] / sparse[key], 3)
    out.update(best_vs_best(dense, sparse))
    for side, t in (("dense", dense), ("sparse", sparse)):
        for err in ("graph_error", "compiled_error"):
            if err in t:
                out[f"{side}_{err}"] = t[err]
    return out


def best_vs_best(dense: dict, sparse: dict) -> dict:
    """Per batch size, the fastest 2:4 timing (eager, graph replay or compiled) against the fastest dense one."""
    out = {}
    for b in sorted({int(k.rsplit("_b", 1)[1][: -len("_p50")]) for k in dense if "latency_ms_b" in k}):
        best = [min((t[k] for k in t if k.endswith(f"latency_ms_b{b}_p50") and t[k]), default=None)
                for t in (dense, sparse)]
        if best[0] and best[1]:
            out[f"best_vs_best_speedup_b{b}"] = round(best[0] / best[1], 3)
    return out


def best_sparse_speedup(kernels: dict, batch: int) -> float:
    """The 2:4 model's fastest mode (eager, graph replay or compiled) against the dense model's fastest at a batch
    size: a sparse graph that beats only a slow dense graph is not a speedup."""
    return kernels.get(f"best_vs_best_speedup_b{batch}", 0.0)


# --------------------------------------------------------------------------------------------- the stage
def _index(ctx: RunContext, stage: PruneStage) -> int:
    return next(i for i, s in enumerate(ctx.recipe.stages) if s.name == stage.name)


def _recovery_loss(teacher, stage: PruneStage, data, ctx: RunContext, settings: TrainStage, index: int):
    """The distillation loss from the unpruned model (None: the plain task loss)."""
    if stage.distill is None:
        return None, 0.0
    from .distill import Projections, make_loss, teacher_logits

    task, device = ctx.recipe.task, ctx.device
    w = stage.distill
    if w.attention and stage.method == "structured" and stage.structured.heads:
        raise RecipeError(f"stages.{index}.distill.attention", "pruned heads have no teacher head to match",
                          "set distill.attention: 0")
    if w.attention:
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


@register("prune")
def prune_stage(model, data, stage: PruneStage, ctx: RunContext, stage_dir):
    task, device, index = ctx.recipe.task, ctx.device, _index(ctx, stage)
    start = time.perf_counter()
    model.to(device)
    teacher = None
    if stage.teacher_stage is not None:  # e.g. pruning during fine-tuning from the pretrained model
        from ..models import load_saved

        teacher, _, _ = load_saved(ctx.run_dir / "stages" / stage.teacher_stage / "model", task)
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    elif stage.distill is not None:
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    settings = None
    if stage.train is not None or stage.method == "gradual":
        settings = TrainStage(kind="train", name=stage.name, **(stage.train.model_dump() if stage.train else {}))
    calib_bs = settings.batch_size if settings else (8 if task == "causal_lm" else 32)
    info: dict = {"method": stage.method, "pattern": stage.pattern, "target_sparsity": stage.sparsity}
    after_step, best_from = None, None
    modules = []

    if stage.method == "structured":
        plan_file = stage_dir / "structure_plan.json"  # a resumed run must rebuild exactly the same shapes
        if plan_file.is_file():
            plan = json.loads(plan_file.read_text())
        else:
            batches = calibration_batches(data, stage.calibration_batches, calib_bs, ctx.recipe.run.seed, device)
            plan = plan_structure(model, stage, batches, task, index)
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
    else:
        modules = targets(model, stage)
        check_pattern(modules, stage.pattern, index)
        weights = [oriented(m, m.weight.detach().abs().float()) for _, m in modules]
        if stage.method == "wanda":
            batches = calibration_batches(data, stage.calibration_batches, calib_bs, ctx.recipe.run.seed, device)
            norms = input_sq_norms(model, modules, batches)
            scores = [w * n.sqrt().to(w.device)[None, :] for w, n in zip(weights, norms)]
            masks = masks_from_scores(scores, stage.sparsity, stage.pattern, "row")
        elif stage.method == "magnitude":
            masks = masks_from_scores(weights, stage.sparsity, stage.pattern, stage.scope)
        else:  # gradual: start at the schedule's initial sparsity, then tighten every `every` steps
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

            info["schedule"] = sched.model_dump()
        del weights
        attach_masks(modules, masks)
    prune_s = time.perf_counter() - start

    result: dict = {"effect": "compressed"}
    if settings is not None:
        loss_fn, cache_s = _recovery_loss(teacher, stage, data, ctx, settings, index)
        summary = train(model, data, settings, ctx, stage_dir, loss_fn=loss_fn, after_step=after_step,
                        best_from_step=best_from)
        summary["teacher_cache_s"] = round(cache_s, 2)
        result["training"] = summary
        result["cost"] = {"wall_s": round(summary["train_wall_s"] + prune_s + cache_s, 2),
                          "tokens_per_s": summary["tokens_per_s"], "mfu": summary["mfu"],
                          "peak_mem_bytes": summary["peak_mem_bytes"]}
        info["recovery"] = (f"distill from stage {stage.teacher_stage}" if stage.teacher_stage else
                            "distill from the unpruned model" if stage.distill else "fine-tune")
    else:
        from .. import measure

        result["cost"] = {"wall_s": round(prune_s, 2), "tokens_per_s": None, "mfu": None,
                          "peak_mem_bytes": measure.peak_memory_bytes(device)}
    bake(modules)
    model.eval()
    if modules:
        per_layer, achieved = sparsity_report(modules)
        info.update({"achieved_sparsity": achieved, "pruned_modules": len(modules), "per_layer": per_layer})
        if stage.pattern == "2:4" and stage.sparse_kernels:
            kernels = time_sparse_kernels(model, modules, ctx)
            info["sparse_kernels"] = kernels
            if kernels.get("measured") and best_sparse_speedup(kernels, max(ctx.recipe.measure.batch_sizes)) >= 1.10:
                result["effect"] = "accelerated"
    info["prune_s"] = round(prune_s, 2)
    result["pruning"] = info
    result["claims"] = "shape" if stage.method == "structured" else "mask"
    return model, result


def describe(info: dict) -> str:
    """One line for the Markdown report."""
    if info["method"] == "structured":
        heads = f"heads kept per layer {info['heads_kept']}, " if info.get("heads_kept") else ""
        return (f"structured ({info['importance']}): {heads}FFN neurons kept per layer {info['ffn_kept']}; "
                f"parameters {info['params_before']:,} → {info['params_after']:,}")
    line = (f"{info['method']} {info['pattern']}: target sparsity {info['target_sparsity']:.0%}, achieved "
            f"{info['achieved_sparsity']:.2%} over {info['pruned_modules']} modules "
            f"(per layer {min(info['per_layer'].values()):.1%}–{max(info['per_layer'].values()):.1%})")
    k = info.get("sparse_kernels")
    if k and k.get("measured"):
        speed = ", ".join(f"{key.replace('speedup_', '')} {v:.2f}x" for key, v in k.items() if "speedup_" in key)
        line += (f"; CUDA 2:4 sparse kernels ({k.get('kernel', 'semi_structured_tensor')}) vs dense bf16, same mode "
                 f"(eager, graph_ replayed, compiled_) and fastest vs fastest (best_vs_best_): {speed}")
    elif k:
        line += f"; {k['reason']}"
    return line



