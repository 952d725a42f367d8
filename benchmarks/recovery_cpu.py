"""Instability recovery at scale (issue 9's figure): the quickstart fine-tune (MiniLM-L6, fine-food reviews), clean,
with a NaN injected at one step and with a loss spike (x1000) injected at another, for each learning-rate factor
and seed. Each injected run must roll back (to the last checkpoint, skipping the data window, learning rate times
the factor) and end within 0.5 pt of the clean run of its seed.

  python benchmarks/recovery_cpu.py [--seeds 0] [--lr-factors 0.5] [--nan-step 60] [--spike-step 80]
                                    [--model DIR] [--out runs/bench-recovery]

Runs on the CPU here, or on a GPU where one is found. Results: benchmarks/RESULTS.md (Reliability).
"""

from __future__ import annotations

import argparse
import os
import statistics

from trainopt.cli import train_only
from trainopt.runner import run

FAULTS = ("TRAINOPT_FAULT_NAN_AT_STEP", "TRAINOPT_FAULT_SPIKE_AT_STEP")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--lr-factors", type=float, nargs="+", default=[0.5])
    ap.add_argument("--nan-step", type=int, default=60)
    ap.add_argument("--spike-step", type=int, default=80)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="runs/bench-recovery")
    args = ap.parse_args()
    deltas: dict[str, list[float]] = {}
    for seed in args.seeds:
        sets = ["run.progress=false", "measure.latency=false", f"run.seed={seed}"]
        if args.model:
            sets.append(f"model.path={args.model}")
        cases = [("clean", {}, 0.5)]
        for f in args.lr_factors:
            cases += [(f"nan-lr{f:g}", {FAULTS[0]: str(args.nan_step)}, f),
                      (f"spike-lr{f:g}", {FAULTS[1]: str(args.spike_step)}, f)]
        acc = {}
        for label, env, factor in cases:
            for k in FAULTS:
                os.environ.pop(k, None)
            os.environ.update(env)
            recipe = train_only("quickstart", [*sets, f"stages.finetune.recovery.lr_factor={factor}"])
            stage = run(recipe, out=f"{args.out}/{seed}-{label}", overwrite=True, show_summary=False)["stages"][0]
            t = stage["training"]
            acc[label] = stage["quality"]["accuracy"]
            if label != "clean":
                deltas.setdefault(label, []).append(acc[label] - acc["clean"])
            print(f"seed {seed} {label:<12} accuracy {acc[label]:.4f} rollbacks {t['rollbacks']} lr_scale "
                  f"{t['lr_scale']} skipped_batches {t['skipped_batches']} steps {t['steps']}", flush=True)
    for label, d in deltas.items():
        sd = statistics.stdev(d) if len(d) > 1 else 0.0
        print(f"{label:<12} vs clean: mean {statistics.mean(d) * 100:+.2f} pt ± {sd * 100:.2f} over {len(d)} seeds "
              f"({', '.join(f'{x * 100:+.1f}' for x in d)})")


if __name__ == "__main__":
    main()
