"""How a stage compares with the model it came from and with the baseline: ratios and the effect label, with the one
threshold every label uses. Shared by the runner, the report and the stages that time kernels of their own."""

from __future__ import annotations


ACCELERATED_MIN_SPEEDUP = 1.10  # below this, a latency difference on a shared CPU is within noise


def classify_effect(entry: dict, parent: dict | None, claims: str = "kernel") -> str:
    """A compression stage's label, from measurements against the model it came from.

    `claims` says what the technique changes: "kernel" (quantization: another kernel runs, so `accelerated`
    when measured ≥ 1.10x faster at the largest batch, else `smaller` if fewer bytes), "shape" (distillation,
    structured pruning: the tensors shrank, so `smaller`; the speed columns show what that bought), "mask"
    (unstructured pruning: zeros in dense tensors, so `masked` — a stage that times a sparse kernel of its own
    sets `accelerated` itself)."""
    if entry["effect"] != "compressed":
        return entry["effect"]
    if parent is not None:
        sizes = sorted(int(k[len("latency_ms_b"):-len("_p50")]) for k in entry["speed"]
                       if k.startswith("latency_ms_b") and k.endswith("_p50"))
        if sizes and claims == "kernel":
            key = f"latency_ms_b{sizes[-1]}_p50"
            new, old = entry["speed"].get(key), parent["speed"].get(key)
            same_device = entry["speed"].get("device") == parent["speed"].get("device")
            if new and old and same_device and old / new >= ACCELERATED_MIN_SPEEDUP:
                return "accelerated"
        if claims != "mask" and entry["size"]["disk_bytes"] < parent["size"]["disk_bytes"]:
            return "smaller"
    if entry["size"]["nonzero_params"] < entry["size"]["params"]:
        return "masked"
    return "unchanged"


def vs_baseline(entry: dict, previous: list[dict], task: str) -> dict:
    base = next((e for e in previous if e["effect"] == "baseline"), entry)
    return compare(entry, base, task)


def compare(entry: dict, base: dict, task: str) -> dict:
    metric = "accuracy" if task == "classification" else "perplexity"
    out = {"quality_metric": metric}
    a, b = entry["quality"].get(metric), base["quality"].get(metric)
    out["quality_delta"] = round(a - b, 5) if a is not None and b is not None else None
    for key, value in entry["speed"].items():
        if key.startswith("latency_ms_b") and key.endswith("_p50"):
            b_lat = base["speed"].get(key)
            name = "speedup_" + key[len("latency_ms_"):-len("_p50")]
            out[name] = round(b_lat / value, 3) if b_lat and value else None
    g_new, g_old = entry["speed"].get("generate_tokens_per_s_b1"), base["speed"].get("generate_tokens_per_s_b1")
    if g_new and g_old:
        out["speedup_generate_b1"] = round(g_new / g_old, 3)
    bd, sd = base["size"]["disk_bytes"], entry["size"]["disk_bytes"]
    out["size_ratio"] = round(sd / bd, 4) if bd else None
    return out
