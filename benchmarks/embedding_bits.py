"""How many bits the vocabulary embedding of a dynamic-int8 classifier needs (issue 27: the quickstart chain ≥ 8x
smaller at ≤ 1 pt). Takes one saved float stage of a finished run (the quickstart's `student`), applies the quantize
stage's own code (compress/quantize/dynamic.py: plan + convert) with each embedding setting, saves the folder as
trainopt saves it and evaluates it on the run's test split (the run's recipe and tokenizer, so the same rows):

    python benchmarks/embedding_bits.py --run runs/quickstart --stage student

Each variant's test accuracy / macro-F1, its validation macro-F1 (where a choice should be made) and its folder's
bytes against the run's baseline stage (report.json's first stage). Quality only: latency is the run's own business (`trainopt run` times each stage interleaved with its parent).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

VARIANTS = [  # (embedding bits, group size, qparams)
    (8, None, None), (4, 32, "minmax"), (4, 64, "minmax"), (4, 128, "minmax"), (4, 32, "hqq"), (4, 64, "hqq"),
    (4, 128, "hqq"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--stage", default="student")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from trainopt.artifacts import load_saved, save_model
    from trainopt.compress.quantize import dynamic
    from trainopt.data.prepare import load_texts, tokenize
    from trainopt.evaluate import evaluate
    from trainopt.models import disk_bytes
    from trainopt.recipe import load_recipe

    recipe = load_recipe(str(args.run / "recipe.yaml"))
    tokenizer = AutoTokenizer.from_pretrained(str(args.run / "tokenizer"))
    data = tokenize(load_texts(recipe), tokenizer, recipe)
    report = json.loads((args.run / "report.json").read_text())
    base = report["stages"][0]
    stage = next(s for s in report["stages"] if s["name"] == args.stage)
    cpu = torch.device("cpu")
    print(f"baseline {base['name']}: accuracy {base['quality']['accuracy']:.4f}, macro-F1 "
          f"{base['quality']['f1_macro']:.4f}, {base['size']['disk_bytes'] / 1e6:.1f} MB")
    base_val = evaluate(load_saved(args.run / base["checkpoint"])[0], data.validation, "classification", 64, cpu)
    print("| embedding | test accuracy (Δ pt) | test macro-F1 (Δ pt) | validation macro-F1 (Δ pt) | MB | smaller |")
    print("|---|---|---|---|---|---|")
    for bits, group, qparams in VARIANTS:
        model, _, meta = load_saved(args.run / stage["checkpoint"])
        dynamic.convert(model, dynamic.plan(model, True, [], bits, group or 32, qparams or "minmax"))
        with tempfile.TemporaryDirectory() as tmp:
            folder = save_model(model, tokenizer, Path(tmp) / "m", {**meta, "task": "classification"})
            size = disk_bytes(folder)
            reloaded, _, _ = load_saved(folder)
        q = evaluate(reloaded, data.test, "classification", 64, cpu)
        v = evaluate(reloaded, data.validation, "classification", 64, cpu)
        label = "8-bit rows" if bits == 8 else f"int4 g{group} {qparams}"
        print(f"| {label} | {q['accuracy']:.4f} ({100 * (q['accuracy'] - base['quality']['accuracy']):+.1f}) | "
              f"{q['f1_macro']:.4f} ({100 * (q['f1_macro'] - base['quality']['f1_macro']):+.1f}) | "
              f"{v['f1_macro']:.4f} ({100 * (v['f1_macro'] - base_val['f1_macro']):+.1f}) | "
              f"{size / 1e6:.1f} | {base['size']['disk_bytes'] / size:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
