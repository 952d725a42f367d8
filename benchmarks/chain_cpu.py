"""Re-measure a finished quickstart chain's models side by side, in one process, on the CPU.

    python benchmarks/chain_cpu.py runs/quickstart [--rounds 3]

Loads every stage's saved model (plain, pruned and quantized folders through trainopt's loader), then times
them on the same fixed test inputs as the run did (batch 1 and 32), interleaved: round r measures every model
once, so a change in machine load hits all of them alike. Prints p50 latency per model (median over rounds),
the speedups against the first stage, and the sizes on disk. Use it when the run itself shared the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from trainopt import load_recipe, measure
from trainopt.data.prepare import load_texts, tokenize
from trainopt.artifacts import load_saved
from trainopt.models import disk_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    recipe = load_recipe(run_dir / "recipe.yaml")
    models = {s["name"]: load_saved(run_dir / s["checkpoint"])[0].eval() for s in report["stages"]}
    tokenizer = load_saved(run_dir / report["stages"][0]["checkpoint"])[1]
    data = tokenize(load_texts(recipe), tokenizer, recipe)
    m = recipe.measure
    inputs = measure.fixed_inputs(data.test, recipe.task, m.batch_sizes, m.seq_len)
    device = torch.device("cpu")
    times: dict[str, list[dict]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            times[name].append(measure.measure_latency(model, inputs, device, m.warmup, m.repeats, m.max_seconds)
                               .to_json())
    first = next(iter(models))
    print(f"threads {torch.get_num_threads()}, {args.rounds} interleaved rounds of warm-up {m.warmup} + up to "
          f"{m.repeats} timed calls per batch size")
    print("| stage | accuracy (run) | disk MB | " + " | ".join(f"b{b} p50 ms" for b in m.batch_sizes) + " |")
    print("|---|---|---|" + "---|" * len(m.batch_sizes))
    base = {b: statistics.median(t[f"latency_ms_b{b}_p50"] for t in times[first]) for b in m.batch_sizes}
    base_disk = disk_bytes(run_dir / report["stages"][0]["checkpoint"])
    for s in report["stages"]:
        cells = []
        for b in m.batch_sizes:
            p50 = statistics.median(t[f"latency_ms_b{b}_p50"] for t in times[s["name"]])
            cells.append(f"{p50:.2f} ({base[b] / p50:.2f}x)")
        disk = disk_bytes(run_dir / s["checkpoint"])
        print(f"| {s['name']} | {s['quality']['accuracy']:.4f} | {disk / 1e6:.1f} ({base_disk / disk:.2f}x smaller) | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
