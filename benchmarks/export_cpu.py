"""ONNX Runtime against trainopt's own PyTorch models, interleaved on one CPU (issue 26).

    python benchmarks/export_cpu.py RUN_DIR [--stages int8,onnx-int8,student,onnx] [--repeats 60]

RUN_DIR: a finished `trainopt run` of the quickstart chain with export stages; when it holds no report yet, the
script runs it there first: the built-in quickstart with two stages appended, `onnx` and `onnx-int8` (kind: export,
from_stage: student, format: onnx, quantize: none / int8) — the user's path, whose own report rows are kept.
Every named stage's saved folder is loaded the way `trainopt predict` loads it (PyTorch for trainopt's folders,
onnxruntime for ONNX exports), scored on the run's test split, and timed with the runner's own interleaved timer
(trainopt/timing.py: warm-up, rotating rounds, the load probe) on the run's fixed inputs (batch 1: the median-length
test review; batch 32: the first 32), so every model sees the same inputs in the same rounds. Ratios are the
first stage's p50 latency over each stage's, with the paired-bootstrap 95% interval; accuracy on the full test split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from trainopt import measure
from trainopt.artifacts import load_saved
from trainopt.evaluate import evaluate
from trainopt.recipe import load_recipe
from trainopt.runner import validate
from trainopt.timing import time_models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--stages", default="student,int8,onnx,onnx-int8")
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    if not (run_dir / "report.json").is_file():
        import trainopt

        raw = trainopt.load_recipe("quickstart").model_dump(mode="json")
        raw["name"] = "quickstart-export"
        raw["stages"] += [{"kind": "export", "name": "onnx", "from_stage": "student", "format": "onnx"},
                          {"kind": "export", "name": "onnx-int8", "from_stage": "student", "format": "onnx",
                           "quantize": "int8"}]
        trainopt.run(raw, out=run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    rows = {s["name"]: s for s in report["stages"]}
    names = [n.strip() for n in args.stages.split(",")]
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    from trainopt.data.prepare import tokenize
    from trainopt.models import load_tokenizer

    _, device, texts = validate(recipe)
    device = torch.device("cpu")
    tokenizer = load_tokenizer(recipe, texts.train)
    data = tokenize(texts, tokenizer, recipe)
    inputs = measure.fixed_inputs(data.test, recipe.task, recipe.measure.batch_sizes, recipe.measure.seq_len)
    models, quality = {}, {}
    for name in names:
        model, _, _ = load_saved(run_dir / rows[name]["checkpoint"], recipe.task)
        models[name] = model.eval()
        quality[name] = evaluate(model, data.test, recipe.task, 64, device)
    timing = time_models(models, inputs, device, warmup=5, repeats=args.repeats, max_seconds=args.max_seconds)
    warnings = timing.speed(names[0], device).timing.get("warnings", [])
    print(f"threads {torch.get_num_threads()}; " + ("; ".join(warnings) or "no load warnings"))
    first = names[0]
    print("| stage | runtime | accuracy | macro-F1 | disk MB | " + " | ".join(
        f"b{b} p50 ms | b{b} vs {first} (95% CI)" for b in sorted(inputs)) + " |")
    for name in names:
        speed = timing.speed(name, device)
        cells = []
        for b in sorted(inputs):
            ratio = timing.speedup(first, name, b)
            ci = f"{ratio[0]:.2f}x ({ratio[1]:.2f}–{ratio[2]:.2f})" if ratio else "—"
            cells += [f"{speed.p50(b):.1f}", ci]
        runtime = "onnxruntime" if type(models[name]).__name__ == "OrtModel" else "PyTorch"
        print(f"| {name} | {runtime} | {quality[name]['accuracy']:.4f} | {quality[name]['f1_macro']:.4f} | "
              f"{rows[name]['size']['disk_bytes'] / 1e6:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
