"""Fine-tune defaults measured on several data sets (issue 27): does the default recipe beat the classical baseline
(TF-IDF + logistic regression) on macro-F1 everywhere, and which learning rate / epochs hold up without per-data-set
tuning? Every run is `trainopt.runner.run` (the path `trainopt run` takes) on recipes/classify.yaml with `--set`
values; the data sets come from benchmarks/quality_data.py.

    python benchmarks/quality_data.py --out bench_data/quality
    python benchmarks/quality_defaults.py --data bench_data/quality --model builtin:minilm-l6 --out runs/quality \
        --grid "lr=5e-5,epochs=1" "lr=1e-4,epochs=3" [--chain] [--jobs 6]

--classical-only: the classical rows alone (CPU, seconds each). --chain: the whole recipe (prune -> distill -> int8,
with its budget; latency measured, 5 s per batch size) with each grid setting (`--grid "budget.on_over_budget=search,
budget.trials=4"` for the budget search). One process per data set (--jobs at a time); each writes
<out>/<data set>.jsonl (one line per run) and the table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _sets(setting: str) -> list[str]:
    out = []
    for part in filter(None, setting.split(",")):
        key, value = part.split("=")
        key = {"lr": "stages.finetune.optimizer.lr", "epochs": "stages.finetune.epochs"}.get(key, key)
        out.append(f"{key}={value}")
    return out


def one_data_set(data: Path, model: str, out: Path, grid: list[str], chain: bool, classical_only: bool) -> None:
    from trainopt.runner import run

    for setting in grid if not classical_only else [grid[0]]:
        sets = [f"data.source={data}", "data.text_column=text", "data.label_column=label", f"model.path={model}",
                f"measure.latency={str(chain).lower()}", "measure.max_seconds=5", "run.progress=false",
                "stages.finetune.log_every=1", *_sets(setting)]
        t0 = time.perf_counter()
        if classical_only:
            row = _classical(sets)
        else:
            report = _run(run, sets + ["measure.classical=false"], out / _tag(data, setting, chain), chain)
            row = {"wall_s": round(time.perf_counter() - t0, 1), "labels": len(report["data"]["labels"]),
                   "rows": report["data"]["rows"], "cleaning": report["data"].get("cleaning")}
            for s in report["stages"]:
                row[s["name"]] = {"accuracy": s["quality"]["accuracy"], "f1_macro": s["quality"]["f1_macro"],
                                  "effect": s["effect"], "budget": s.get("budget"),
                                  "speedup_b32": s["vs_baseline"].get("speedup_b32"),
                                  "size_ratio": s["vs_baseline"].get("size_ratio"),
                                  "training": {k: (s.get("training") or {}).get(k) for k in
                                               ("steps", "best_step", "metric", "best_val_metric", "rollbacks",
                                                "spikes_skipped")}}
            row["losses"] = _losses(out / _tag(data, setting, chain))
        row = {"data": data.name, "setting": "classical" if classical_only else setting, "chain": chain, **row}
        with (out / f"{data.name}.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def _losses(run_dir: Path) -> list[float]:
    """The fine-tune's logged step losses (every step with log_every=1): benchmarks/spike_guard_replay.py reads them."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r["loss"] for r in rows if r.get("stage") == "finetune" and "loss" in r and "event" not in r]


def _tag(data: Path, setting: str, chain: bool) -> str:
    return f"{data.name}-{setting.replace(',', '_').replace('=', '')}" + ("-chain" if chain else "")


def _classical(sets: list[str]) -> dict:
    """The classical row alone: the recipe's data, cleaned and split as a run does it, and classical.py."""
    from trainopt.classical import classical_baseline
    from trainopt.data.prepare import load_texts
    from trainopt.recipe import load_recipe

    recipe = load_recipe("recipes/classify.yaml", sets)
    entry = classical_baseline(load_texts(recipe), None, recipe)
    return {"classical": entry["quality"], "classical_settings": {k: entry["settings"][k] for k in
                                                                 ("C", "class_weight")},
            "classical_speed": entry["speed"], "classical_size": entry["size"], "wall_s": entry["cost"]["wall_s"]}


def _run(run, sets: list[str], out: Path, chain: bool) -> dict:
    from trainopt.recipe import load_recipe

    recipe = load_recipe("recipes/classify.yaml", sets)
    if not chain:  # the fine-tune alone
        recipe = load_recipe({**recipe.model_dump(mode="json"), "stages": [recipe.stages[0].model_dump(mode="json")]})
    return run(recipe, out=out, overwrite=True, show_summary=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="bench_data/quality")
    ap.add_argument("--model", default="builtin:minilm-l6")
    ap.add_argument("--out", default="runs/quality")
    ap.add_argument("--grid", nargs="+", default=["lr=5e-5,epochs=1"])
    ap.add_argument("--only", nargs="*", help="data set names (default: every folder under --data)")
    ap.add_argument("--chain", action="store_true")
    ap.add_argument("--classical-only", action="store_true")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.child:
        one_data_set(Path(args.child), args.model, out, args.grid, args.chain, args.classical_only)
        return
    sets = [d for d in sorted(Path(args.data).iterdir()) if d.is_dir() and (not args.only or d.name in args.only)]
    procs: list = []
    for d in sets:
        while len([p for p in procs if p.poll() is None]) >= args.jobs:
            time.sleep(1)
        cmd = [sys.executable, __file__, "--child", str(d), "--model", args.model, "--out", str(out), "--grid",
               *args.grid] + (["--chain"] if args.chain else []) + (["--classical-only"] if args.classical_only
                                                                      else [])
        procs.append(subprocess.Popen(cmd, stdout=open(out / f"{d.name}.log", "a"), stderr=subprocess.STDOUT))
    for p in procs:
        p.wait()
    for d in sets:
        path = out / f"{d.name}.jsonl"
        for line in path.read_text().splitlines() if path.is_file() else []:
            r = json.loads(line)
            cells = [f"{k} acc {v['accuracy']} F1 {v['f1_macro']} ({v.get('effect', '')})" for k, v in r.items()
                     if isinstance(v, dict) and "f1_macro" in v]
            print(f"{r['data']:16} {r['setting']:22} " + " | ".join(cells))


if __name__ == "__main__":
    main()
