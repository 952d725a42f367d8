"""Dynamic int8 PTQ vs QAT on CPU, side by side in one run, against the float model they come from.

    .venv/bin/python benchmarks/quantize_cpu.py [--model runs/quickstart/stages/finetune/model]
                                                [--qat-epochs 1] [--out runs/bench-quantize]

Without --model, the quickstart fine-tune runs first (about 2.5 minutes on 2 cores). Prints the report table;
the numbers for benchmarks/RESULTS.md come from report.json.
"""

from __future__ import annotations

import argparse

import trainopt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a fine-tuned classifier folder (default: fine-tune first)")
    ap.add_argument("--qat-epochs", type=float, default=1.0)
    ap.add_argument("--qat-lr", type=float, default=2e-5)
    ap.add_argument("--out", default="runs/bench-quantize")
    args = ap.parse_args()
    raw = trainopt.load_recipe("quickstart").model_dump(mode="json")
    finetune = next(s for s in raw["stages"] if s["kind"] == "train")
    first = {"kind": "eval", "name": "float"} if args.model else finetune
    if args.model:
        raw["model"] = {"path": args.model}
    qat = {"epochs": args.qat_epochs, "optimizer": {"lr": args.qat_lr}, "precision": "auto",
           "schedule": {"name": "linear", "warmup_ratio": 0.1}, "eval_every": 40, "checkpoint_every": 0}
    raw["stages"] = [first,
                     {"kind": "quantize", "name": "int8-ptq", "method": "dynamic_int8"},
                     {"kind": "quantize", "name": "int8-qat", "method": "dynamic_int8", "from_stage": first["name"],
                      "qat": qat}]
    raw["name"] = "bench-quantize"
    raw["run"]["progress"] = False
    report = trainopt.run(raw, out=args.out, overwrite=True)
    for s in report["stages"]:
        vs = s["vs_baseline"]
        print(f"{s['name']:<10} effect={s['effect']:<11} acc={s['quality']['accuracy']:.4f} "
              f"delta={vs['quality_delta']:+.4f} speedup_b1={vs['speedup_b1']} speedup_b32={vs['speedup_b32']} "
              f"size_ratio={vs['size_ratio']} disk_MB={s['size']['disk_bytes'] / 1e6:.1f}")


if __name__ == "__main__":
    main()
