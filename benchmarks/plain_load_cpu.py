"""Does every stage folder of a run load correctly in plain transformers, or refuse? (issue 26)

    python benchmarks/plain_load_cpu.py RUN_DIR

For each stage of a finished classification run: `AutoModelForSequenceClassification.from_pretrained(folder)` as a
user would call it, then with `trust_remote_code=True`; a load that succeeds is scored on the run's test split and
compared with trainopt's own loader (what `trainopt predict` runs): accuracy and the largest logit difference. A
refusal prints its message's first line. Exports (ONNX/GGUF folders) are skipped: they are not transformers models.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from trainopt.artifacts import load_saved
from trainopt.data.prepare import tokenize
from trainopt.evaluate import evaluate, model_inputs
from trainopt.models import load_tokenizer
from trainopt.recipe import load_recipe
from trainopt.runner import validate


def _plain(folder: Path, remote: bool):
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=remote).eval(), None
    except Exception as e:  # noqa: BLE001 — what a user sees is the point
        return None, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:150]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    _, _, texts = validate(recipe)
    data = tokenize(texts, load_tokenizer(recipe, texts.train), recipe)
    cpu = torch.device("cpu")
    print("| stage | plain from_pretrained | with trust_remote_code | accuracy (plain) | accuracy (trainopt) | "
          "max logit diff |")
    for stage in report["stages"]:
        if stage["kind"] == "export":
            continue
        folder = run_dir / stage["checkpoint"]
        ours, _, _ = load_saved(folder, "classification")
        plain, why = _plain(folder, remote=False)
        remote, why_remote = (plain, None) if plain is not None else _plain(folder, remote=True)
        loaded = plain or remote
        acc_plain = diff = "—"
        if loaded is not None:
            acc_plain = f"{evaluate(loaded, data.test, 'classification', 64, cpu)['accuracy']:.4f}"
            batch = data.test.collate(list(range(min(64, len(data.test)))))
            with torch.inference_mode():
                diff = f"{float((loaded(**model_inputs(batch)).logits - ours(**model_inputs(batch)).logits).abs().max()):.2e}"
        acc_ours = evaluate(ours, data.test, "classification", 64, cpu)["accuracy"]
        print(f"| {stage['name']} | {'loads' if plain is not None else 'refused: ' + why} | "
              f"{'—' if plain is not None else ('loads' if remote is not None else 'refused: ' + why_remote)} | "
              f"{acc_plain} | {acc_ours:.4f} | {diff} |")


if __name__ == "__main__":
    main()
