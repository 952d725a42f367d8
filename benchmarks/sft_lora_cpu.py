"""LoRA against a full fine-tune on the built-in SFT recipe (issue 23): `recipes/sft-lora.yaml` as a user runs it,
then the same data, steps, batch and schedule with every parameter trained (a `train` stage) at a few learning
rates (the full fine-tune at its best), and QLoRA (the same LoRA on a 4-bit base, `--qlora nf4,fp4`). Held-out response perplexity, trainable parameters, wall time, tokens/s and
peak memory of each, run one after the other on the same machine.

    python benchmarks/sft_lora_cpu.py [--steps 60] [--full-lrs 3e-5,1e-4] [--lora-lrs 5e-4,1e-3] [--qlora nf4]
                                      [--out runs/sft-bench]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from trainopt.recipe import read_yaml, resolve_recipe_path
from trainopt.runner import run

LORA_ONLY = ("rank", "alpha", "dropout", "target_modules", "dora", "rslora", "merge", "quantize_base", "double_quant")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="override max_steps (default: the recipe's)")
    ap.add_argument("--full-lrs", default="3e-5,1e-4")
    ap.add_argument("--lora-lrs", default="", help="also LoRA at these learning rates (default: the recipe's only)")
    ap.add_argument("--qlora", default="", help="also the recipe's LoRA on a 4-bit base of these types (nf4,fp4)")
    ap.add_argument("--qlora-lrs", default="", help="QLoRA also at these learning rates")
    ap.add_argument("--no-recipe-row", action="store_true", help="skip the recipe as written")
    ap.add_argument("--out", default="runs/sft-bench")
    args = ap.parse_args()
    raw = read_yaml(resolve_recipe_path("sft-lora"))
    if args.steps:
        raw["stages"][1]["max_steps"] = args.steps
    rows = []
    variants = [] if args.no_recipe_row else [("lora", raw)]
    for lr in [float(x) for x in args.lora_lrs.split(",") if x]:
        lo = copy.deepcopy(raw)
        lo["stages"][1]["optimizer"] = {**lo["stages"][1]["optimizer"], "lr": lr}
        variants.append((f"lora lr {lr:g}", lo))
    for quant in [x for x in args.qlora.split(",") if x]:
        for lr in [None] + [float(x) for x in args.qlora_lrs.split(",") if x]:
            q = copy.deepcopy(raw)
            q["stages"][1]["quantize_base"] = quant
            if lr is not None:
                q["stages"][1]["optimizer"] = {**q["stages"][1]["optimizer"], "lr": lr}
            variants.append((f"qlora {quant}" + (f" lr {lr:g}" if lr is not None else ""), q))
    for lr in [float(x) for x in args.full_lrs.split(",") if x]:
        full = copy.deepcopy(raw)
        stage = {k: v for k, v in full["stages"][1].items() if k not in LORA_ONLY}
        stage.update(kind="train", name="full")
        stage["optimizer"] = {**stage["optimizer"], "lr": lr}
        full["stages"] = [stage]
        full["measure"] = {**full.get("measure", {}), "latency": False, "samples": 0}
        variants.append((f"full lr {lr:g}", full))
    for label, recipe in variants:
        t0 = time.perf_counter()
        report = run(recipe, out=Path(args.out) / label.replace(" ", "-"), overwrite=True, show_summary=False)
        wall = time.perf_counter() - t0
        for s in report["stages"]:
            t = s.get("training") or {}
            rows.append({"variant": label, "stage": s["name"], "test_loss": s["quality"]["loss"],
                         "test_perplexity": s["quality"]["perplexity"],
                         "trainable": (s.get("lora") or {}).get("trainable_fraction", 1.0 if t else 0.0),
                         "train_s": s["cost"].get("wall_s"), "tokens_per_s": s["cost"].get("tokens_per_s"),
                         "peak_mem_mb": round((s["cost"].get("peak_mem_bytes") or 0) / 2**20),
                         "run_wall_s": round(wall, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"hardware": report["hardware"], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
