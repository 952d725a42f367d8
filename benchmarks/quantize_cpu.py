"""Dynamic int8 PTQ vs QAT on CPU, side by side in one run, against the float model they come from.

    .venv/bin/python benchmarks/quantize_cpu.py [--model runs/quickstart/stages/finetune/model]
                                                [--qat-epochs 1] [--out runs/bench-quantize]

--control adds the control for QAT: the same extra epoch trained in float, then PTQ.
Without --model, the quickstart fine-tune runs first (about 2.5 minutes on 2 cores). Prints the report table;
the numbers for benchmarks/RESULTS.md come from report.json.
"""

from __future__ import annotations

import argparse

import trainopt
from common import quickstart_recipe, summarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a fine-tuned classifier folder (default: fine-tune first)")
    ap.add_argument("--qat-epochs", type=float, default=1.0)
    ap.add_argument("--qat-lr", type=float, default=2e-5)
    ap.add_argument("--control", action="store_true",
                    help="also train the QAT epoch in float and quantize after it (PTQ), the control for QAT")
    ap.add_argument("--out", default="runs/bench-quantize")
    args = ap.parse_args()
    raw, first = quickstart_recipe(args.model, "float", "bench-quantize")
    qat = {"epochs": args.qat_epochs, "optimizer": {"lr": args.qat_lr}, "precision": "auto",
           "schedule": {"name": "linear", "warmup_ratio": 0.1}, "eval_every": 40, "checkpoint_every": 0}
    raw["stages"] = [first,
                     {"kind": "quantize", "name": "int8-ptq", "method": "dynamic_int8"},
                     {"kind": "quantize", "name": "int8-qat", "method": "dynamic_int8", "from_stage": first["name"],
                      "qat": qat}]
    if args.control:
        raw["stages"] += [{"kind": "train", "name": "float-extra", "from_stage": first["name"], **qat},
                          {"kind": "quantize", "name": "int8-extra-ptq", "method": "dynamic_int8"}]
    summarize(trainopt.run(raw, out=args.out, overwrite=True))


if __name__ == "__main__":
    main()
