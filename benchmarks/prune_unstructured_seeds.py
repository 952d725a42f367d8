"""Unstructured 50% on MiniLM-L6 (issue 4's ≤ 0.5 pt figure), seed-averaged: each seed is one run of

    pretrained (eval) → finetune (the quickstart fine-tune) →
      mag50-kd:    magnitude 50% of the fine-tuned model + 1 epoch of recovery distilled from it
      gradual50-pre: gradual 50% (cubic) *during* a 3-epoch fine-tune from the pretrained model, distilled from the
                     fine-tuned model (`teacher_stage: finetune`)

so that every pruned model is compared with the dense model of its own seed (the seed moves the fine-tune, the
split stays the quickstart's). Accuracy on the 1,000 test reviews; no latency (masked models are not faster).

    python benchmarks/prune_unstructured_seeds.py [--seeds 0 1 2] [--jobs 3] [--model DIR] [--out runs/bench-prune-seeds]

`--jobs N` runs N seeds at once as separate processes (each on the next GPU when there are several).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import trainopt


def recipe(seed: int, model: str | None) -> dict:
    raw = trainopt.load_recipe("quickstart").model_dump(mode="json")
    finetune = next(s for s in raw["stages"] if s["kind"] == "train")
    kd = {"kd": 1.0, "ce": 1.0, "temperature": 2.0}
    settings = {k: v for k, v in finetune.items() if k not in ("kind", "name", "from_stage")}
    recovery = {**settings, "optimizer": {**finetune["optimizer"], "lr": 5e-5}, "epochs": 1, "eval_every": 40,
                "checkpoint_every": 0}
    prune_train = {**settings, "epochs": 3, "eval_every": 40, "checkpoint_every": 0}
    raw["stages"] = [
        {"kind": "eval", "name": "pretrained"},
        {**finetune, "name": "finetune", "checkpoint_every": 0},
        {"kind": "prune", "name": "mag50-kd", "from_stage": "finetune", "method": "magnitude", "sparsity": 0.5,
         "train": recovery, "distill": kd},
        {"kind": "prune", "name": "gradual50-pre", "from_stage": "pretrained", "method": "gradual", "sparsity": 0.5,
         "schedule": {"start": 0.0, "end": 0.7, "every": 10}, "teacher_stage": "finetune", "distill": kd,
         "train": prune_train}]
    if model:
        raw["model"] = {"path": model}
    raw["name"] = f"prune-seed{seed}"
    raw["run"].update(progress=False, seed=seed)
    raw["measure"]["latency"] = False
    return raw


def run_one(seed: int, args) -> None:
    report = trainopt.run(recipe(seed, args.model), out=Path(args.out) / f"seed{seed}", overwrite=True)
    acc = {s["name"]: s["quality"]["accuracy"] for s in report["stages"]}
    print(json.dumps({"seed": seed, **acc}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="runs/bench-prune-seeds")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        run_one(args.one, args)
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.jobs > 1:
        import torch

        gpus = torch.cuda.device_count()
        procs = []
        for k, seed in enumerate(args.seeds):
            env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": str(k % gpus)} if gpus > 1 else {}))
            cmd = [sys.executable, __file__, "--one", str(seed), "--out", args.out]
            cmd += [f"--model={args.model}"] if args.model else []
            log = open(Path(args.out) / f"seed{seed}.log", "w")
            procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
            if len(procs) >= args.jobs:
                procs.pop(0)[0].wait()
        for p, log in procs:
            p.wait()
            log.close()
    else:
        for seed in args.seeds:
            run_one(seed, args)
    rows = []
    for seed in args.seeds:
        path = Path(args.out) / f"seed{seed}" / "report.json"
        if path.is_file():
            rows.append({s["name"]: s["quality"]["accuracy"] for s in json.loads(path.read_text())["stages"]})
    print("| seed | dense | magnitude 50% + KD (Δ pt) | gradual 50% from pretrained + KD (Δ pt) |\n|---|---|---|---|")
    for seed, r in zip(args.seeds, rows):
        print(f"| {seed} | {r['finetune']:.4f} | {r['mag50-kd']:.4f} ({(r['mag50-kd'] - r['finetune']) * 100:+.1f}) | "
              f"{r['gradual50-pre']:.4f} ({(r['gradual50-pre'] - r['finetune']) * 100:+.1f}) |")
    if rows:
        mean = {k: statistics.mean(r[k] for r in rows) for k in ("finetune", "mag50-kd", "gradual50-pre")}
        print(f"| mean | {mean['finetune']:.4f} | {mean['mag50-kd']:.4f} ({(mean['mag50-kd'] - mean['finetune']) * 100:+.2f}) "
              f"| {mean['gradual50-pre']:.4f} ({(mean['gradual50-pre'] - mean['finetune']) * 100:+.2f}) |")


if __name__ == "__main__":
    main()
