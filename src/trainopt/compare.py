"""How a stage compares with the model it came from and with the baseline: ratios and the effect label, with the one
threshold every label uses. Shared by the runner and the stages that time kernels of their own."""

from __future__ import annotations

from .results import Outcome, StageResult

ACCELERATED_MIN_SPEEDUP = 1.10  # below this, a latency difference on a shared CPU is within noise


def classify_effect(result: StageResult, parent: StageResult | None, outcome: Outcome) -> str:
    """A compression stage's label, from measurements against the model it came from.

    `outcome.claims` says what the technique changes: "kernel" (quantization: another kernel runs, so `accelerated`
    when measured ≥ 1.10x faster at the largest batch, else `smaller` if fewer bytes), "shape" (distillation,
    structured pruning: the tensors shrank, so `smaller`; the speed columns show what that bought), "mask"
    (unstructured pruning: zeros in dense tensors, so `masked` — a stage that times a sparse kernel of its own
    returns `accelerated` itself)."""
    if outcome.effect != "compressed":
        return outcome.effect
    if parent is not None:
        big = result.speed.largest_batch
        if big is not None and outcome.claims == "kernel":
            new, old = result.speed.p50(big), parent.speed.p50(big)
            if new and old and result.speed.device == parent.speed.device and old / new >= ACCELERATED_MIN_SPEEDUP:
                return "accelerated"
        if outcome.claims != "mask" and result.size.disk_bytes < parent.size.disk_bytes:
            return "smaller"
    if result.size.nonzero_params < result.size.params:
        return "masked"
    return "unchanged"


def vs_baseline(result: StageResult, previous: list[StageResult], task: str) -> dict:
    base = next((e for e in previous if e.effect == "baseline"), result)
    return compare(result, base, task)


def compare(result: StageResult, base: StageResult, task: str) -> dict:
    """quality_delta = stage − base in the task's metric; speedup_b<N> = base latency / stage latency at batch N;
    speedup_generate_b1 = stage / base generation rate; size_ratio = stage / base disk bytes."""
    metric = "accuracy" if task == "classification" else "perplexity"
    out = {"quality_metric": metric}
    a, b = result.quality.get(metric), base.quality.get(metric)
    out["quality_delta"] = round(a - b, 5) if a is not None and b is not None else None
    for batch in sorted(result.speed.latency):
        new, old = result.speed.p50(batch), base.speed.p50(batch)
        out[f"speedup_b{batch}"] = round(old / new, 3) if old and new else None
    g_new = result.speed.generation.get("generate_tokens_per_s_b1")
    g_old = base.speed.generation.get("generate_tokens_per_s_b1")
    if g_new and g_old:
        out["speedup_generate_b1"] = round(g_new / g_old, 3)
    bd, sd = base.size.disk_bytes, result.size.disk_bytes
    out["size_ratio"] = round(sd / bd, 4) if bd else None
    return out
