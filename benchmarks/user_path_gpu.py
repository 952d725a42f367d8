"""The user's own path at bench speed (issue 22): `trainopt run gpt2-124m` end to end, its report's whole-stage
tokens/s next to its steady state, and where the rest went (compile, evaluations, checkpoints, slow windows). The
bench's reference comes from benchmarks/hf_trainer_vs_trainopt.py, run in the same call.

    python benchmarks/user_path_gpu.py --steps 1000 --out runs/user-path
    python benchmarks/user_path_gpu.py --steps 300 --set stages.0.recovery.enabled=true --tag recovery

Prints one table (one row per run) and writes each run's folder and result.json under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def one_run(out: Path, steps: int, sets: list[str], tag: str) -> dict:
    run_dir = out / tag
    cmd = [sys.executable, "-m", "trainopt", "run", "gpt2-124m", "--out", str(run_dir), "--overwrite",
           "--set", f"stages.0.max_steps={steps}", *sum((["--set", s] for s in sets), [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / f"{tag}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"tag": tag, "error": (proc.stderr or proc.stdout)[-600:]}
    report = json.loads((run_dir / "report.json").read_text())
    t = report["stages"][0]["training"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    windows = [r for r in rows if r.get("tokens_per_s") and r.get("stage") == "pretrain"]
    times = [r["time"] for r in windows]
    gaps = sorted(((b - a), windows[i + 1]["step"]) for i, (a, b) in enumerate(zip(times, times[1:])))
    return {"tag": tag, "steps": t["steps"], "micro_batch": t["micro_batch"], "process_wall_s": round(wall, 1),
            "train_wall_s": t["train_wall_s"], "tokens_per_s": t["tokens_per_s"], "mfu": t["mfu"],
            "steady_tokens_per_s": t.get("steady_tokens_per_s"), "steady_mfu": t.get("steady_mfu"),
            "first_step_s": t.get("first_step_s"), "eval_s": t.get("eval_s"),
            "window_median_s": round(statistics.median(g for g, _ in gaps), 3) if gaps else None,
            "slowest_windows": [(round(g, 2), s) for g, s in gaps[-3:]],
            "whole_vs_steady": round(t["tokens_per_s"] / t["steady_tokens_per_s"], 3)
            if t.get("steady_tokens_per_s") else None,
            "test_perplexity": report["stages"][0]["quality"].get("perplexity"),
            "speed": report["stages"][0]["speed"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--tag", default="recipe")
    ap.add_argument("--out", default="runs/user-path")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    row = one_run(out, args.steps, args.set, args.tag)
    (out / f"{args.tag}.json").write_text(json.dumps(row, indent=1))
    print(json.dumps({k: v for k, v in row.items() if k != "speed"}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
