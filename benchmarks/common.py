"""Shared by the CPU benchmarks: the quickstart recipe with a chosen first stage, and the summary lines."""

from __future__ import annotations

import trainopt


def quickstart_recipe(model: str | None, first_name: str, name: str) -> tuple[dict, dict]:
    """(recipe dict, first stage): the quickstart fine-tune, or an eval of an already fine-tuned `model`."""
    raw = trainopt.load_recipe("quickstart").model_dump(mode="json")
    finetune = next(s for s in raw["stages"] if s["kind"] == "train")
    first = {"kind": "eval", "name": first_name} if model else {**finetune, "name": first_name}
    if model:
        raw["model"] = {"path": model}
    raw["name"] = name
    raw["run"]["progress"] = False
    return raw, first


def summarize(report: dict) -> None:
    """One line per stage: effect, accuracy (and share of the baseline's), speedups, size."""
    base = report["stages"][0]["quality"]["accuracy"]
    for s in report["stages"]:
        vs, acc = s["vs_baseline"], s["quality"]["accuracy"]
        print(f"{s['name']:<15} effect={s['effect']:<11} acc={acc:.4f} ({acc / base:.1%} of baseline, "
              f"{vs['quality_delta']:+.4f}) speedup_b1={vs['speedup_b1']} speedup_b32={vs['speedup_b32']} "
              f"size_ratio={vs['size_ratio']} disk_MB={s['size']['disk_bytes'] / 1e6:.1f}")
