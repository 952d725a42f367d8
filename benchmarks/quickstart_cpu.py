"""Quickstart on CPU, side by side in one process: the built-in recipe with fp32 and with `precision: auto`.

    .venv/bin/python benchmarks/quickstart_cpu.py [--out runs/bench-quickstart] [--seeds 0]

Prints a Markdown table (test accuracy, train and evaluation wall time, tokens/s) for benchmarks/RESULTS.md.
The train+eval time is the stage's training wall time plus its test evaluation and latency measurement.
"""

from __future__ import annotations

import argparse
import time

import trainopt
from trainopt.measure import hardware_info, pick_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-quickstart")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--precisions", default="fp32,auto")
    args = ap.parse_args()
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for precision in args.precisions.split(","):
            t0 = time.perf_counter()
            report = trainopt.run("quickstart", out=f"{args.out}/{precision}-seed{seed}", overwrite=True,
                                  overrides=[f"stages.finetune.precision={precision}", f"run.seed={seed}",
                                             "run.progress=false"])
            total = time.perf_counter() - t0
            st = report["stages"][0]
            rows.append((precision, st["training"]["precision"], seed, st["quality"]["accuracy"],
                         st["quality"]["f1_macro"], st["cost"]["wall_s"], st["cost"]["eval_wall_s"],
                         st["cost"]["tokens_per_s"], total))
    hw = hardware_info(pick_device("auto"))
    print(f"\nHardware: {hw['name']}, {hw['threads']} threads, torch {hw['torch']}\n")
    print("| precision (resolved) | seed | test accuracy | macro-F1 | train s | test eval + latency s | "
          "train tokens/s | whole run s |")
    print("|---|---|---|---|---|---|---|---|")
    for p, res, seed, acc, f1, tw, ew, tps, total in rows:
        print(f"| {p} ({res}) | {seed} | {acc:.4f} | {f1:.4f} | {tw:.1f} | {ew:.1f} | {tps:,.0f} | {total:.1f} |")


if __name__ == "__main__":
    main()
