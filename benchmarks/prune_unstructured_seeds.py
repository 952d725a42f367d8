"""Unstructured 50% on MiniLM-L6 (issue 4's ≤ 0.5 pt figure), seed-averaged: each seed is one run of

    pretrained (eval) → finetune (the quickstart fine-tune) →
      mag50-kd:    magnitude 50% of the fine-tuned model + 1 epoch of recovery distilled from it
      gradual50-pre: gradual 50% (cubic) *during* a 3-epoch fine-tune from the pretrained model, distilled from the
                     fine-tuned model (`teacher_stage: finetune`)

so that every pruned model is compared with the dense model of its own seed (the seed moves the fine-tune, the
split stays the quickstart's). Accuracy on the 1,000 test reviews; no latency (masked models are not faster).
With `--variants two-four` instead: 2:4 by magnitude + the same KD recovery (`twofour-kd`), the accuracy side of
issue 4's 2:4 figure (its speed: benchmarks/cslt_direct_gpu.py).

    python benchmarks/prune_unstructured_seeds.py [--seeds 0 1 2] [--jobs 3] [--model DIR] [--variants unstructured|two-four]

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


VARIANTS = {"unstructured": ["mag50-kd", "gradual50-pre"], "two-four": ["twofour-kd"]}
LABELS = {"mag50-kd": "magnitude 50% + KD", "gradual50-pre": "gradual 50% from pretrained + KD",
          "twofour-kd": "2:4 (magnitude) + KD"}


def recipe(seed: int, model: str | None, variants: str = "unstructured") -> dict:
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
         "train": prune_train},
        {"kind": "prune", "name": "twofour-kd", "from_stage": "finetune", "method": "magnitude", "pattern": "2:4",
         "train": recovery, "distill": kd}]
    raw["stages"] = [s for s in raw["stages"] if s["kind"] != "prune" or s["name"] in VARIANTS[variants]]
    if model:
        raw["model"] = {"path": model}
    raw["name"] = f"prune-seed{seed}"
    raw["run"].update(progress=False, seed=seed)
    raw["measure"]["latency"] = False
    return raw


def run_one(seed: int, args) -> None:
    report = trainopt.run(recipe(seed, args.model, args.variants), out=Path(args.out) / f"seed{seed}", overwrite=True)
    acc = {s["name"]: s["quality"]["accuracy"] for s in report["stages"]}
    print(json.dumps({"seed": seed, **acc}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="runs/bench-prune-seeds")
    ap.add_argument("--variants", default="unstructured", choices=sorted(VARIANTS))
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
            cmd = [sys.executable, __file__, "--one", str(seed), "--out", args.out, "--variants", args.variants]
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
    names = VARIANTS[args.variants]
    print("| seed | dense | " + " | ".join(f"{LABELS[n]} (Δ pt)" for n in names) + " |\n|" + "---|" * (len(names) + 2))
    for seed, r in zip(args.seeds, rows):
        print(f"| {seed} | {r['finetune']:.4f} | "
              + " | ".join(f"{r[n]:.4f} ({(r[n] - r['finetune']) * 100:+.1f})" for n in names) + " |")
    if rows:
        mean = {k: statistics.mean(r[k] for r in rows) for k in ("finetune", *names)}
        print(f"| mean | {mean['finetune']:.4f} | "
              + " | ".join(f"{mean[n]:.4f} ({(mean[n] - mean['finetune']) * 100:+.2f})" for n in names) + " |")


if __name__ == "__main__":
    main()
