"""Pruning MiniLM-L6 fine-tuned on the reviews, on CPU, side by side in one run against the dense model.

    .venv/bin/python benchmarks/prune_cpu.py [--model runs/quickstart/stages/finetune/model]
                                             [--epochs 1] [--out runs/bench-prune] [--only structured]

Stages (each from the dense model): magnitude 50% one-shot, magnitude 50% + recovery fine-tune, gradual 50%
(cubic schedule during the fine-tune), 2:4 + recovery, Wanda 50% one-shot, and structured heads + FFN
neurons (Taylor importance) recovered by distillation from the dense model, at two sizes.
Without --model, the quickstart fine-tune runs first (about 2.5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse

import trainopt
from common import quickstart_recipe, summarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a fine-tuned classifier folder (default: fine-tune first)")
    ap.add_argument("--epochs", type=float, default=1.0, help="recovery / gradual fine-tuning epochs")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--only", default=None, help="comma-separated subset: unstructured,structured")
    ap.add_argument("--structured", default="0.5:0.5,0.33:0.5", help="heads:ffn fractions, comma-separated")
    ap.add_argument("--recover", default="finetune", choices=["finetune", "distill"],
                    help="unstructured recovery: plain fine-tune, or distillation from the dense model")
    ap.add_argument("--names", default=None, help="comma-separated stage names to keep (default: all)")
    ap.add_argument("--out", default="runs/bench-prune")
    args = ap.parse_args()
    raw, first = quickstart_recipe(args.model, "dense", "bench-prune")
    fine = {"epochs": args.epochs, "optimizer": {"lr": args.lr}, "precision": "auto",
            "schedule": {"name": "linear", "warmup_ratio": 0.1}, "eval_every": 40, "checkpoint_every": 0}
    dense = first["name"]
    kd = {"distill": {"kd": 1.0, "ce": 1.0}} if args.recover == "distill" else {}
    tag = "-kd" if kd else ""
    groups = set((args.only or "unstructured,structured").split(","))
    stages = [first]
    if "unstructured" in groups:
        if not kd:
            stages += [
                {"kind": "prune", "name": "mag50-oneshot", "from_stage": dense, "method": "magnitude",
                 "sparsity": 0.5},
                {"kind": "prune", "name": "wanda50-oneshot", "from_stage": dense, "method": "wanda", "sparsity": 0.5}]
        else:
            stages.append({"kind": "prune", "name": "wanda50" + tag, "from_stage": dense, "method": "wanda",
                           "sparsity": 0.5, "train": fine, **kd})
        stages += [
            {"kind": "prune", "name": "mag50" + tag, "from_stage": dense, "method": "magnitude",
             "sparsity": 0.5, "train": fine, **kd},
            {"kind": "prune", "name": "gradual50" + tag, "from_stage": dense, "method": "gradual", "sparsity": 0.5,
             "schedule": {"start": 0.0, "end": 0.6, "every": 5}, "train": fine, **kd},
            {"kind": "prune", "name": "2of4" + tag, "from_stage": dense, "method": "magnitude",
             "pattern": "2:4", "train": fine, **kd}]
    if "structured" in groups:
        for spec in args.structured.split(","):
            heads, ffn = (float(x) for x in spec.split(":"))
            stages.append({"kind": "prune", "name": f"struct-h{heads:g}-f{ffn:g}", "from_stage": dense,
                           "method": "structured", "structured": {"heads": heads, "ffn": ffn},
                           "calibration_batches": 16, "train": fine, "distill": {"kd": 1.0, "ce": 1.0}})
    if args.names:
        keep = set(args.names.split(","))
        stages = [first] + [s for s in stages[1:] if s["name"] in keep]
    raw["stages"] = stages
    summarize(trainopt.run(raw, out=args.out, overwrite=True))


if __name__ == "__main__":
    main()
