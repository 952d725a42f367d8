"""Does TPE with median pruning find a good recipe with less compute than random search? (issue 8's figure)

For each sampler seed, two studies on the same recipe (recipes/tune-quickstart.yaml: a short MiniLM-L6 fine-tune on
the fine-food reviews per trial, scored on validation accuracy): random search without pruning, and TPE with the
median pruner, each `--trials` trials. Compute is counted in trial-steps (optimizer steps summed over trials; a
pruned trial counts the steps it ran). Reported per seed: random search's best accuracy and its compute, and the
compute TPE + median had spent when one of its trials first reached that accuracy (trials in the order they ran).
The two studies draw independently (TPE's sampler seed is the seed + 1000), so that TPE's random startup trials do
not replay random search's first trials.

  python benchmarks/tune_search.py [--seeds 0 1 2] [--trials 24] [--model DIR] [--out DIR] [--set KEY=VALUE ...]

`--model` replaces builtin:minilm-l6 (e.g. a saved copy on a machine without the package). Results:
benchmarks/RESULTS.md (Tuning).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from trainopt.tune import tune


def steps_to_reach(trials: list[dict], target: float) -> int | None:
    """Trial-steps spent (in trial order) until a complete trial first scores ≥ target; None if none does."""
    spent = 0
    for t in sorted(trials, key=lambda t: t["number"]):
        spent += t["steps"] or 0
        if t["state"] == "complete" and t["values"][0] >= target - 1e-9:
            return spent
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="runs/bench-tune")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    out = Path(args.out)
    sets = list(args.overrides) + ([f"model.path={args.model}"] if args.model else [])
    rows = []
    for seed in args.seeds:
        row = {"seed": seed}
        # Independent draws: TPE's random startup trials must not replay random search's first trials.
        for label, extra, sampler_seed in (("random", ["search.sampler=random", "search.pruner.name=none"], seed),
                                           ("tpe_median", ["search.sampler=tpe", "search.pruner.name=median"],
                                            seed + 1000)):
            t0 = time.perf_counter()
            s = tune("tune-quickstart", out=out / f"{label}-{seed}", overwrite=True,
                     overrides=[*sets, *extra, f"search.seed={sampler_seed}", f"search.trials={args.trials}"])
            done = [t for t in s["trials"] if t["state"] == "complete"]
            row[label] = {"best": max(t["values"][0] for t in done), "trial_steps": s["trial_steps"],
                          "complete": s["counts"]["complete"], "pruned": s["counts"]["pruned"],
                          "failed": s["counts"]["fail"], "wall_s": round(time.perf_counter() - t0, 1),
                          "best_params": s["best"][0]["params"] if s.get("best") else None,
                          "best_test_accuracy": (s["best"][0].get("test_quality") or {}).get("finetune")
                          if s.get("best") else None, "trials": s["trials"]}
        target = row["random"]["best"]
        reach = steps_to_reach(row["tpe_median"]["trials"], target)
        row["tpe_steps_to_random_best"] = reach
        row["compute_ratio"] = None if reach is None else round(reach / row["random"]["trial_steps"], 3)
        rows.append(row)
        print(f"seed {seed}: random best {target:.4f} in {row['random']['trial_steps']} trial-steps; TPE+median best "
              f"{row['tpe_median']['best']:.4f} ({row['tpe_median']['pruned']} pruned, "
              f"{row['tpe_median']['trial_steps']} trial-steps); reached random's best after {reach} trial-steps "
              f"(ratio {row['compute_ratio']})", flush=True)
    hw = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine()
    summary = {"hardware": hw, "torch": torch.__version__, "trials": args.trials, "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n| seed | random best (val acc) | random trial-steps | TPE+median best | TPE pruned | TPE trial-steps "
          "| TPE steps to random's best | ratio |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['random']['best']:.4f} | {r['random']['trial_steps']} | "
              f"{r['tpe_median']['best']:.4f} | {r['tpe_median']['pruned']} | {r['tpe_median']['trial_steps']} | "
              f"{r['tpe_steps_to_random_best']} | {r['compute_ratio']} |")


if __name__ == "__main__":
    main()
