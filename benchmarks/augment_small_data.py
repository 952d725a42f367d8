"""Does augmentation help with little labelled data? MiniLM-L6 fine-tuned on 200 / 500 fine-food reviews with and
without each augmentation, several seeds; mean ± std test accuracy on the 1,000 test reviews.

    python benchmarks/augment_small_data.py [--sizes 200,500] [--seeds 0,1,2] [--variants none,eda,bt,eda+bt,ctx]
                                            [--steps 60] [--out runs/bench-augment]

Every run: `data.max_train_examples = N` drawn with `data.split_seed = seed` (a different subset per seed),
validation capped at 100 reviews (early model selection), the same number of optimizer steps for every variant
(compute-matched: an augmented set is seen for fewer epochs), batch 16, lr 1e-4, bf16 autocast where native.
Variants: none; eda (4 EDA examples per review, rates 0.1, WordNet synonyms); bt (one Apertium eng→spa→eng
back-translation per review); eda+bt; ctx (2 variants per review with 15% of the words replaced by neighbours in
MiniLM's input-embedding space, TinyBERT-style). Writes results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import trainopt

VARIANTS = {
    "none": None,
    "eda": {"kind": "augment", "name": "augment", "per_example": 4},
    "bt": {"kind": "augment", "name": "augment", "per_example": 0, "backtranslate": {}},
    "eda+bt": {"kind": "augment", "name": "augment", "per_example": 4, "backtranslate": {}},
    "ctx": {"kind": "augment", "name": "augment", "per_example": 0,  # MiniLM's input-embedding neighbours
            "contextual": {"source": "embedding", "per_example": 2, "rate": 0.15}},
}


def recipe(n: int, seed: int, variant: str, steps: int) -> dict:
    raw = trainopt.load_recipe("quickstart").model_dump(mode="json")
    finetune = next(s for s in raw["stages"] if s["kind"] == "train")
    finetune.update({"max_steps": steps, "batch_size": 16, "eval_every": max(1, steps // 6), "checkpoint_every": 0,
                     "log_every": 10})
    raw["stages"] = ([VARIANTS[variant]] if VARIANTS[variant] else []) + [finetune]
    raw["name"] = f"aug-{variant}-n{n}-s{seed}".replace("+", "-")
    raw["data"].update({"max_train_examples": n, "max_validation_examples": 100, "split_seed": seed})
    raw["run"].update({"seed": seed, "progress": False, "tensorboard": False})
    raw["measure"]["latency"] = False
    return raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="200,500")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default="none,eda,bt,eda+bt")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default="runs/bench-augment")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for n in (int(x) for x in args.sizes.split(",")):
        for variant in args.variants.split(","):
            for seed in (int(x) for x in args.seeds.split(",")):
                key = f"{n}/{variant}/{seed}"
                if key in results:
                    continue  # resumable: finished runs are kept
                raw = recipe(n, seed, variant, args.steps)
                t0 = time.perf_counter()
                report = trainopt.run(raw, out=out / raw["name"], overwrite=True)
                st = report["stages"][-1]
                aug = report["augmentation"][0] if report["augmentation"] else {}
                results[key] = {"accuracy": st["quality"]["accuracy"], "f1_macro": st["quality"]["f1_macro"],
                                "train_rows": st["training"]["train_examples"], "added": aug.get("added", 0),
                                "per_operation": aug.get("per_operation"), "augment_s": aug.get("seconds"),
                                "backtranslate": aug.get("backtranslate"), "wall_s": round(time.perf_counter() - t0, 1)}
                print(key, results[key], flush=True)
                tmp = results_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(results, indent=1))
                tmp.replace(results_file)
    print("\n| train reviews | augmentation | train rows | test accuracy (mean ± std) | vs none |")
    print("|---|---|---|---|---|")
    for n in (int(x) for x in args.sizes.split(",")):
        base = None
        for variant in args.variants.split(","):
            accs = [results[k]["accuracy"] for k in results if k.startswith(f"{n}/{variant}/")]
            rows = [results[k]["train_rows"] for k in results if k.startswith(f"{n}/{variant}/")]
            if not accs:
                continue
            mean, std = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
            base = mean if variant == "none" else base
            delta = "" if base is None or variant == "none" else f"{(mean - base) * 100:+.1f} pt"
            print(f"| {n} | {variant} | {statistics.mean(rows):.0f} | {mean:.4f} ± {std:.4f} (n={len(accs)}) "
                  f"| {delta} |")


if __name__ == "__main__":
    main()
