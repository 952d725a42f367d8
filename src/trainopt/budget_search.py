"""`budget: {on_over_budget: search}`: a compressing stage whose validation quality fell past its budget is run again
with weaker settings that Optuna draws, and the fastest setting that fits the budget is kept.

Each technique says what "weaker" means for it (`weaker(trial, info)` on its recipe schema): prune — the heads/FFN
fractions or the sparsity, between none and as written; distill — more teacher layers kept and more epochs;
quantize — which blocks, embeddings and head stay float. Every trial starts from a copy of the stage's input model,
runs the stage's own `run()` with the drawn settings, and is scored on three objectives: validation quality (the
budget's metric, higher is better), forward latency at the report's largest batch (a short timing next to nothing
else) and the weights' bytes in memory. Optuna's multi-objective TPE proposes the next setting from those; the one
kept is, among the trials within the budget, the fastest (then the smallest): a point of the Pareto front. Where
none fits, the best-quality trial is kept and the stage stays flagged.

The chosen settings replace the stage's in `recipe.chosen.yaml` beside the run's recipe (running that recipe repeats
the chain without searching); every trial is listed in the stage's `budget.search` entry. A search is not resumed
inside: a run killed during one searches that stage again on --resume."""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .budget import drop_of
from .evaluate import METRICS, evaluate
from .train.monitor import console


@dataclass
class Searched:
    model: torch.nn.Module
    outcome: object
    stage: object  # the chosen settings (the stage's schema, its name unchanged)
    entry: dict = field(default_factory=dict)  # what goes under the stage's budget.search in the report


def info_for(model: torch.nn.Module) -> dict:
    """What the techniques' weaker() need to know about the model: its block count and names, its output head."""
    from .compress.blocks import find_blocks

    parent, attr, blocks = find_blocks(model)
    prefix = next(name for name, m in model.named_modules() if m is blocks)
    heads = [n for n in ("classifier", "score", "lm_head") if hasattr(model, n)]
    return {"num_layers": len(blocks), "block_prefix": prefix, "head": heads}


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's non-zero weights as held in memory (int8 weights count one byte each; the zeros of a
    pruning mask count nothing: what a sparse format would store). For a dense model, its tensors' bytes."""
    def nonzero(t: torch.Tensor) -> int:  # quantized tensors (PyTorch's int8 kernels) count as stored
        return t.numel() if t.is_quantized else int(torch.count_nonzero(t))

    return sum(nonzero(t) * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))


def latency_ms(model, inputs: dict | None, device: torch.device) -> tuple[float | None, bool]:
    """A short timing of one forward at the largest measured batch (3 warm-up calls, the median of 5), and whether
    it is reliable (timing.py: no other process competed for the cores, a narrow spread)."""
    if not inputs:
        return None, True
    from .timing import time_models

    batch = max(inputs)
    timing = time_models({"trial": model}, {batch: inputs[batch]}, device, 3, 5, 5.0)
    speed = timing.speed("trial", device)
    return speed.p50(batch), speed.reliable


def search(parent: torch.nn.Module, data, stage, ctx, stage_dir: Path, module, spec, reference: float,
           metric: str, first: dict) -> Searched | None:
    """Run the budget search for `stage` from `parent` (the stage's input model, untouched). `first` is the stage as
    written, already scored ({value, latency_ms, weight_bytes}). None where the technique has no weaker settings."""
    import optuna

    if not hasattr(stage, "weaker"):
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    info = info_for(parent)
    higher = METRICS[ctx.recipe.task][metric] == "max"
    study = optuna.create_study(directions=["maximize" if higher else "minimize", "minimize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=ctx.recipe.run.seed, n_startup_trials=4))
    trials = [{"trial": "as written", **first, "fits": False}]
    kept: list[Searched] = []  # the trials that may be chosen (held on the CPU until the search ends)
    root = stage_dir / "search"
    for n in range(spec.trials):
        trial = study.ask()
        try:
            candidate = type(stage).model_validate(stage.weaker(trial, info).model_dump())
        except ValueError as e:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            trials.append({"trial": n, "error": str(e).splitlines()[0][:200]})
            continue
        t0 = time.perf_counter()
        console.print(f"[bold]{stage.name}[/bold]: budget search, trial {n + 1}/{spec.trials}: "
                      + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in
                                  trial.params.items()))
        trial_dir = root / f"trial{n}"
        trial_dir.mkdir(parents=True, exist_ok=True)  # as the runner makes a stage's folder before it runs
        model, outcome = module.run(copy.deepcopy(parent), data, candidate, ctx, trial_dir)
        device = torch.device(outcome.measure_device or ctx.device.type)
        model.eval()
        value = evaluate(model, data.validation, ctx.recipe.task, 64, device)[metric]
        (lat, steady), size = latency_ms(model, ctx.measure_inputs, device), weight_bytes(model)
        fits = drop_of(metric, reference, value) <= spec.max_drop + 1e-9
        params = {k: round(v, 4) if isinstance(v, float) else v for k, v in trial.params.items()}
        row = {"trial": n, "params": params, "value": value, "latency_ms": lat, "latency_reliable": steady,
               "weight_bytes": size, "fits": fits, "wall_s": round(time.perf_counter() - t0, 1)}
        trials.append(row)
        study.tell(trial, [value, lat if lat is not None else 0.0, size])
        console.print(f"  validation {metric} {value} ({'within' if fits else 'over'} budget), "
                      + (f"{lat:.1f} ms, " if lat is not None else "") + f"{size / 1e6:.1f} MB")
        if fits or not any(k.entry["fits"] for k in kept):  # once one fits, those over budget are not kept
            kept = [k for k in kept if k.entry["fits"] or not fits]
            kept.append(Searched(model.to("cpu") if device.type != "cpu" else model, outcome, candidate, row))
        del model
    shutil.rmtree(root, ignore_errors=True)
    if not kept:
        return None
    busy = not all(t.get("latency_reliable", True) for t in trials)
    best = None
    for k in kept:  # chosen once every timing is in: on a busy machine latencies are not compared
        if best is None or _better(k.entry, best, higher, by_latency=not busy):
            best = k
    chosen = best.entry
    best.entry = {"trials": trials, "chosen": chosen["trial"], "chosen_params": chosen["params"],
                  "fits": chosen["fits"], "objectives": [metric, "latency_ms", "weight_bytes"],
                  "rule": "the fastest trial within the budget (latencies within 5% tie: the fewest non-zero weight "
                          "bytes); none within: the best quality"
                          + ("; the machine was busy (a trial's timing was unreliable), so latencies were not "
                             "compared: the fewest non-zero weight bytes within the budget" if busy else "")}
    best.stage = best.stage.model_copy(update={"name": stage.name})
    return best


TIE = 0.05  # latencies within 5% of each other are a tie (a short timing on a shared machine): the smaller wins


def _better(row: dict, best: Searched | None, higher: bool, by_latency: bool = True) -> bool:
    """Whether `row` is a better pick than the best so far. On a busy machine (an unreliable timing among the
    trials) latencies are not compared: the fewest non-zero weight bytes wins."""
    if best is None:
        return True
    other = best.entry
    if row["fits"] != other["fits"]:
        return row["fits"]
    if not row["fits"]:  # neither fits: the better quality
        return row["value"] > other["value"] if higher else row["value"] < other["value"]
    a, b = row["latency_ms"], other["latency_ms"]
    if by_latency and a is not None and b is not None and abs(a - b) > TIE * min(a, b):
        return a < b
    return (row["weight_bytes"], a or 0.0) < (other["weight_bytes"], b or 0.0)
