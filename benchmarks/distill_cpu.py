"""Distillation on CPU, side by side in one run: teacher, distilled student, and the same student trained with
labels only (the ablation that shows what distillation bought).

    .venv/bin/python benchmarks/distill_cpu.py [--model runs/quickstart/stages/finetune/model]
        [--layers 1,3,5] [--epochs 3] [--lr 1e-4] [--out runs/bench-distill]

Without --model, the quickstart fine-tune runs first (about 2.5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse

import trainopt
from common import quickstart_recipe, summarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--layers", default="1,3,5", help="teacher layers the student keeps")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--kd", type=float, default=1.0)
    ap.add_argument("--ce", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--hidden", type=float, default=0.0, help="weight of the hidden-state MSE")
    ap.add_argument("--no-ablation", action="store_true", help="skip the labels-only student")
    ap.add_argument("--out", default="runs/bench-distill")
    args = ap.parse_args()
    raw, first = quickstart_recipe(args.model, "teacher", "bench-distill")
    layers = [int(x) for x in args.layers.split(",")]
    train = {"epochs": args.epochs, "batch_size": 32, "optimizer": {"lr": args.lr, "weight_decay": 0.01},
             "schedule": {"name": "linear", "warmup_ratio": 0.1}, "precision": "auto", "eval_every": 56,
             "checkpoint_every": 0}
    raw["stages"] = [first,
                     {"kind": "distill", "name": "student-kd", "student": {"layers": layers},
                      "loss": {"kd": args.kd, "ce": args.ce, "temperature": args.temperature, "hidden": args.hidden},
                      "train": train},
                     {"kind": "distill", "name": "student-labels", "from_stage": "teacher",
                      "student": {"layers": layers}, "loss": {"kd": 0.0, "ce": 1.0}, "train": train}]
    if args.no_ablation:
        raw["stages"].pop()
    summarize(trainopt.run(raw, out=args.out, overwrite=True))


if __name__ == "__main__":
    main()
