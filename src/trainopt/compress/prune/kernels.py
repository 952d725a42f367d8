"""2:4 on CUDA: the pruned model timed dense and on 2:4 sparse kernels (cuSPARSELt through sparse24.py, PyTorch's
semi-structured tensor subclass where cuSPARSELt is missing), in every mode, so that `accelerated` is claimed only
where the fastest 2:4 mode beats the fastest dense mode."""

from __future__ import annotations

import copy

import torch

from ... import measure
from ...results import latency_key
from . import sparse24


# ----------------------------------------------------------------------------------- 2:4 sparse kernels
def _timings(model, inputs, device, m) -> dict:
    """Eager p50 latencies, CUDA-graph replays where the forward can be captured, and the compiled model replayed
    from graphs (torch.compile's reduce-overhead mode)."""
    speed = measure.measure_latency(model, inputs, device, m.warmup, m.repeats, m.max_seconds)
    out = {latency_key(b): lat.p50_ms for b, lat in sorted(speed.latency.items())}
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


def time_sparse_kernels(model, modules, ctx, search_alg: bool = True) -> dict:
    """On CUDA: the same 2:4 model dense vs with its weights run by 2:4 sparse kernels, both bf16, eager, replayed
    from a hand-captured CUDA graph, and compiled with graphs (the last two remove per-call host work such as
    cuSPARSELt's plan set-up). Where cuSPARSELt is available, each Linear becomes a `sparse24.Sparse24Linear` (one
    direct `torch._cslt_sparse_mm` call; with `search_alg`, cuSPARSELt's fastest algorithm at the largest timed
    batch); elsewhere PyTorch's semi-structured tensor subclass is used."""
    inputs, m = ctx.measure_inputs, ctx.recipe.measure
    if ctx.device.type != "cuda":
        return {"measured": False, "reason": "semi-structured sparse kernels run on CUDA only; on "
                f"{ctx.device.type} the 2:4 model runs dense (masked)"}
    if not inputs:
        return {"measured": False, "reason": "sparse kernels not timed: latency measurement is off "
                "(measure.latency: false)"}
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


