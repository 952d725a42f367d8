"""The ruler on the quickstart's own models (issue 22): the four stage folders of a finished quickstart run timed
together (timing.time_models, as `trainopt run` times a stage next to its parent and the baseline) on an idle machine
twice, then next to one busy-looping process per core. Do the two idle runs agree within their intervals, and does
the loaded one say it is unreliable?

    python benchmarks/timing_cpu.py --run runs/quickstart [--hogs N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

from trainopt import measure
from trainopt.artifacts import load_saved
from trainopt.data.prepare import tokenize
from trainopt.runner import validate
from trainopt.timing import cores, time_models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished quickstart run directory")
    ap.add_argument("--hogs", type=int, default=None, help="busy processes in the loaded condition (default: cores)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    run = Path(args.run)
    report = json.loads((run / "report.json").read_text())
    recipe, device, texts = validate(str(run / "recipe.yaml"))
    data = tokenize(texts, AutoTokenizer.from_pretrained(str(run / "tokenizer")), recipe)
    m = recipe.measure
    inputs = measure.fixed_inputs(data.test, recipe.task, m.batch_sizes, m.seq_len)
    names = [s["name"] for s in report["stages"]]
    models = {s["name"]: load_saved(run / s["checkpoint"], recipe.task)[0] for s in report["stages"]}
    base, rows = names[0], []
    for condition in ("idle 1", "idle 2", "loaded"):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.hogs or cores())] if condition == "loaded" else []
        try:
            timing = time_models(models, inputs, torch.device("cpu"), m.warmup, m.repeats, m.max_seconds)
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        for name in names:
            speed = timing.speed(name, torch.device("cpu"))
            row = {"condition": condition, "stage": name, "reliable": speed.reliable,
                   "warnings": speed.timing["warnings"], "machine": timing.machine}
            for b, lat in speed.latency.items():
                row[f"b{b}"] = [lat.p50_ms, lat.q25_ms, lat.q75_ms]
                if name != base:
                    row[f"speedup_b{b}"] = timing.speedup(base, name, b)
            rows.append(row)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"threads {torch.get_num_threads()}, cores {cores()}, {m.repeats} calls per model and batch size")
    print("| condition | stage | " + " | ".join(f"b{b} p50 ms [IQR]" for b in m.batch_sizes) + " | "
          + " | ".join(f"b{b} vs {base} [95%]" for b in m.batch_sizes) + " | reliable |")
    print("|---" * (3 + 2 * len(m.batch_sizes)) + "|")
    for r in rows:
        lat = " | ".join(f"{r[f'b{b}'][0]:.1f} [{r[f'b{b}'][1]:.1f}–{r[f'b{b}'][2]:.1f}]" for b in m.batch_sizes)
        sp = " | ".join((f"{s[0]:.2f}x [{s[1]:.2f}–{s[2]:.2f}]" if (s := r.get(f"speedup_b{b}")) else "—")
                        for b in m.batch_sizes)
        print(f"| {r['condition']} | {r['stage']} | {lat} | {sp} | "
              + ("yes" if r["reliable"] else "no: " + "; ".join(r["warnings"])) + " |")


if __name__ == "__main__":
    main()
