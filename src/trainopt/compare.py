"""How a stage compares with the model it came from and with the baseline: ratios (with their 95% intervals where
the models were timed interleaved, timing.py) and the effect label, with the one threshold every label uses. Shared
by the runner and the stages that time kernels of their own."""

from __future__ import annotations

from .results import Outcome, StageResult
from .timing import Timing

ACCELERATED_MIN_SPEEDUP = 1.10  # below this, a latency difference on a shared CPU is within noise


def classify_effect(result: StageResult, parent: StageResult | None, outcome: Outcome, timing: Timing | None = None,
                    notes: list[str] | None = None) -> str:
    """A compression stage's label, from measurements against the model it came from.

    `outcome.claims` says what the technique changes: "kernel" (quantization: another kernel runs, so `accelerated`
    when measured ≥ 1.10x faster at the largest batch — with `timing` (the stage and its parent timed interleaved),
    when the lower end of the ratio's 95% interval clears 1.10x on a machine that was not busy — else `smaller` if
    fewer bytes), "shape" (distillation, structured pruning: the tensors shrank, so `smaller`; the speed columns show
    what that bought), "mask" (unstructured pruning: zeros in dense tensors, so `masked` — a stage that times a
    sparse kernel of its own returns `accelerated` itself). Why a faster-looking stage was not labelled
    `accelerated` is appended to `notes`."""
    if outcome.effect != "compressed":
        return outcome.effect
    if parent is not None:
        big = result.speed.largest_batch
        if big is not None and outcome.claims == "kernel":
            faster, why = _faster(result, parent, big, timing)
            if faster:
                return "accelerated"
            if why and notes is not None:
                notes.append(why)
        if outcome.claims != "mask" and result.size.disk_bytes < parent.size.disk_bytes:
            return "smaller"
    if (outcome.claims == "mask" and result.size.nonzero_params < result.size.params) or _sparser(result, parent):
        return "masked"
    return "unchanged"


MASKED_MIN_SPARSITY_GAIN = 0.01  # zeros a stage added beyond its parent's: a few exact zeros are not a mask


def _sparser(result: StageResult, parent: StageResult | None) -> bool:
    """A stage that claims no mask is `masked` only when its zeros grew by a whole percent of its weights (a
    zero-padded export): not for the handful of exact zeros every model carries."""
    def zeros(r: StageResult) -> float:
        return 1 - r.size.nonzero_params / r.size.params if r.size.params else 0.0

    return zeros(result) - (zeros(parent) if parent is not None else 0.0) >= MASKED_MIN_SPARSITY_GAIN


def lost_sparsity(result: StageResult, parent: StageResult | None) -> str | None:
    """A note when a stage trained the zeros of a pruned parent back (its masks are not kept while training): the
    parent's sparsity, this stage's, and what to do instead."""
    if parent is None or not parent.size.params or not result.size.params:
        return None
    before = 1 - parent.size.nonzero_params / parent.size.params
    after = 1 - result.size.nonzero_params / result.size.params
    if before < 0.05 or before - after < 0.05:
        return None
    return (f"{parent.name}'s pruned weights were trained back: sparsity {before:.0%} → {after:.0%} (training "
            "does not keep pruning masks; prune after the training stages, or prune again after this one)")


def _faster(result: StageResult, parent: StageResult, batch: int, timing: Timing | None) -> tuple[bool, str | None]:
    threshold = ACCELERATED_MIN_SPEEDUP
    ratio = _interleaved(timing, parent.name, result.name, batch)
    if ratio is None:  # timed separately: the point figures, on one device
        new, old = result.speed.p50(batch), parent.speed.p50(batch)
        same = result.speed.device == parent.speed.device
        return bool(new and old and same and old / new >= threshold), None
    point, lo, hi = ratio
    if point < threshold:
        return False, None
    if lo < threshold:
        return False, (f"{point:.2f}x faster than {parent.name} at batch {batch}, but the 95% interval "
                       f"{lo:.2f}–{hi:.2f}x does not clear {threshold:.2f}x: not labelled accelerated")
    if not result.speed.reliable:
        return False, (f"{point:.2f}x faster than {parent.name} at batch {batch}, but the timing is unreliable ("
                       + "; ".join(result.speed.timing.get("warnings", [])) + "): not labelled accelerated")
    return True, None


def _interleaved(timing: Timing | None, ref: str, new: str, batch: int):
    if timing is None or ref not in timing.rounds or new not in timing.rounds:
        return None
    return timing.speedup(ref, new, batch)


def vs_baseline(result: StageResult, previous: list[StageResult], task: str, timing: Timing | None = None) -> dict:
    base = next((e for e in previous if e.effect == "baseline"), result)
    return compare(result, base, task, timing)


def compare(result: StageResult, base: StageResult, task: str, timing: Timing | None = None) -> dict:
    """quality_delta = stage − base in the task's metric; speedup_b<N> = base latency / stage latency at batch N
    (with `speedup_b<N>_ci95` where both were timed interleaved in `timing`; `timed` says which);
    speedup_generate_b1 = stage / base generation rate; size_ratio = stage / base disk bytes."""
    metric = "accuracy" if task == "classification" else "perplexity"
    out = {"quality_metric": metric}
    a, b = result.quality.get(metric), base.quality.get(metric)
    out["quality_delta"] = round(a - b, 5) if a is not None and b is not None else None
    itself = base.name == result.name
    interleaved = False
    for batch in sorted(result.speed.latency):
        ratio = None if itself else _interleaved(timing, base.name, result.name, batch)
        if ratio is not None:
            out[f"speedup_b{batch}"], out[f"speedup_b{batch}_ci95"] = ratio[0], [ratio[1], ratio[2]]
            interleaved = True
            continue
        new, old = result.speed.p50(batch), base.speed.p50(batch)
        out[f"speedup_b{batch}"] = round(old / new, 3) if old and new else None
    if not itself and result.speed.latency:
        out["timed"] = "interleaved" if interleaved else "separately"
    g_new = result.speed.generation.get("generate_tokens_per_s_b1")
    g_old = base.speed.generation.get("generate_tokens_per_s_b1")
    if g_new and g_old:
        out["speedup_generate_b1"] = round(g_new / g_old, 3)
    bd, sd = base.size.disk_bytes, result.size.disk_bytes
    out["size_ratio"] = round(sd / bd, 4) if bd else None
    return out
