"""Does TPE with trial pruning find a good recipe with less compute than random search? (issue 8's figure)

For each seed, studies on the same recipe (recipes/tune-quickstart.yaml: a short MiniLM-L6 fine-tune on the
fine-food reviews per trial, scored on validation accuracy): random search without pruning (`--trials` trials), and
one or more TPE studies with a pruner. Compute is counted in trial-steps (optimizer steps summed over trials; a
pruned trial counts the steps it ran). Reported per seed: random search's best accuracy and its compute, and the
compute each TPE study had spent when one of its trials first reached that accuracy (trials in the order they ran).
TPE studies draw independently of random search (sampler seed + 1000), so that TPE's random startup trials do not
replay random search's first trials.

Studies (`--studies`):
  random              random sampler, no pruning, `--trials` trials
  tpe_median          TPE + median pruner (the recipe's settings), `--trials` finished trials
  tpe_median_budget   TPE + median pruner whose first 2 evaluations are never pruned, stopped by a compute budget of
                      `--budget` trial-steps (default: half of random search's `--trials` × one trial's steps)
  tpe_median_patience_budget  the same, but the median pruner may stop a trial only once its validation score fell
                      below its earlier best over its last 3 evaluations (Optuna's PatientPruner, patience 2)
  tpe_pct_budget      TPE + percentile pruner (prunes below the 25th percentile), same budget

  python benchmarks/tune_search.py [--seeds 0 1 2] [--studies random,tpe_median_budget] [--jobs N] [--model DIR]

`--jobs N` runs N studies at once as separate processes (each on the next GPU when there are several); a study that
already wrote its study.json under --out is reused unless --overwrite. `--model` replaces builtin:minilm-l6 (e.g. a
saved copy on a machine without the package). Results: benchmarks/RESULTS.md (Tuning).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path



def steps_per_trial(overrides: list[str]) -> int:
    """Optimizer steps of one full trial of tune-quickstart (with --set overrides): its train stage's max_steps, or
    epochs × ⌈examples / (batch × accumulation)⌉ with the recipe's max_train_examples (2,000 reviews, batch 16, one
    epoch: 125)."""
    import math

    from trainopt.recipe import load_recipe

    recipe = load_recipe("tune-quickstart", overrides)
    stage = next(s for s in recipe.stages if s.kind == "train")
    if stage.max_steps:
        return stage.max_steps
    n = recipe.data.max_train_examples
    if n is None:
        raise SystemExit("tune_search: the recipe has no data.max_train_examples; pass --budget explicitly")
    return math.ceil(stage.epochs * math.ceil(n / (stage.batch_size * stage.grad_accum)))


def study_overrides(label: str, trials: int, budget: int) -> list[str]:
    tpe_budget = ["search.sampler=tpe", "search.trials=null", f"search.max_trial_steps={budget}"]
    return {"random": ["search.sampler=random", "search.pruner.name=none", f"search.trials={trials}"],
            "tpe_median": ["search.sampler=tpe", "search.pruner.name=median", f"search.trials={trials}"],
            "tpe_median_budget": [*tpe_budget, "search.pruner.name=median", "search.pruner.warmup_evals=2"],
            "tpe_median_patience_budget": [*tpe_budget, "search.pruner.name=median", "search.pruner.warmup_evals=2",
                                           "search.pruner.patience=2"],
            "tpe_pct_budget": [*tpe_budget, "search.pruner.name=percentile", "search.pruner.percentile=25.0",
                               "search.pruner.warmup_evals=1"]}[label]


def steps_to_reach(trials: list[dict], target: float) -> int | None:
    """Trial-steps spent (in trial order) until a complete trial first scores ≥ target; None if none does."""
    spent = 0
    for t in sorted(trials, key=lambda t: t["number"]):
        spent += t["steps"] or 0
        if t["state"] == "complete" and t["values"][0] >= target - 1e-9:
            return spent
    return None


def best_within(trials: list[dict], cap: int) -> float | None:
    """The best complete trial among those that finished within `cap` trial-steps spent (in trial order): what the
    study had found with that much compute — a running trial the budget let finish past it does not count."""
    spent, best = 0, None
    for t in sorted(trials, key=lambda t: t["number"]):
        spent += t["steps"] or 0
        if spent > cap:
            break
        if t["state"] == "complete":
            best = t["values"][0] if best is None else max(best, t["values"][0])
    return best


def run_one(label: str, seed: int, args) -> None:
    from trainopt.tune.study import tune

    sets = list(args.overrides) + ([f"model.path={args.model}"] if args.model else [])
    sampler_seed = seed if label == "random" else seed + 1000
    t0 = time.perf_counter()
    tune("tune-quickstart", out=Path(args.out) / f"{label}-{seed}", overwrite=True,
         overrides=[*sets, *study_overrides(label, args.trials, args.budget), f"search.seed={sampler_seed}"])
    print(f"{label} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)


def launch_all(pairs: list[tuple[str, int]], args) -> None:
    """Each study in its own process, `--jobs` at a time, spread over the visible GPUs."""
    import torch

    gpus = torch.cuda.device_count()
    todo, running, k = list(pairs), [], 0
    while todo or running:
        while todo and len(running) < args.jobs:
            label, seed = todo.pop(0)
            env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": str(k % gpus)} if gpus > 1 else {}))
            log = open(Path(args.out) / f"{label}-{seed}.log", "w")
            cmd = [sys.executable, __file__, "--one", label, str(seed), "--out", args.out, "--trials",
                   str(args.trials), "--budget", str(args.budget)]
            cmd += [f"--model={args.model}"] if args.model else []
            cmd += [a for s in args.overrides for a in ("--set", s)]
            running.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log, label, seed))
            k += 1
        time.sleep(2)
        for item in list(running):
            if item[0].poll() is not None:
                item[1].close()
                running.remove(item)
                if item[0].returncode:
                    print(f"{item[2]} seed {item[3]} failed: see {item[1].name}", flush=True)


def load(out: Path, label: str, seed: int) -> dict | None:
    path = out / f"{label}-{seed}" / "study.json"
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--studies", default="random,tpe_median_budget")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--budget", type=int, default=None, help="TPE compute budget in trial-steps "
                    "(default: half of --trials × one trial's steps, from the recipe)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="runs/bench-tune")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--one", nargs=2, metavar=("STUDY", "SEED"), help=argparse.SUPPRESS)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    args.budget = args.budget or args.trials * steps_per_trial(args.overrides) // 2
    if args.one:
        run_one(args.one[0], int(args.one[1]), args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = args.studies.split(",")
    pairs = [(lb, s) for s in args.seeds for lb in labels if args.overwrite or load(out, lb, s) is None]
    if args.jobs > 1:
        launch_all(pairs, args)
    else:
        for label, seed in pairs:
            run_one(label, seed, args)
    report(out, args, labels)


def chance_baseline(values: list[float], n_half: int, n_full: int, draws: int = 50_000, seed: int = 0) -> float:
    """P(the best of n_half draws ≥ the best of n_full draws) when both sample the same pool of trial scores: how
    often a sampler no better than random, given half the trials, reaches random search's best. 1/3 for 12 vs 24
    continuous scores; more when scores tie (accuracy comes in steps of one validation example)."""
    import random

    rng = random.Random(seed)
    hits = sum(max(rng.choices(values, k=n_half)) >= max(rng.choices(values, k=n_full)) - 1e-12
               for _ in range(draws))
    return hits / draws


def report(out: Path, args, labels: list[str]) -> None:
    import torch

    rows = []
    for seed in args.seeds:
        row = {"seed": seed, **{lb: load(out, lb, seed) for lb in labels}}
        if row.get("random") is None:
            continue
        target = max(t["values"][0] for t in row["random"]["trials"] if t["state"] == "complete")
        row["target"], row["random_steps"] = target, row["random"]["trial_steps"]
        for lb in labels[1:]:
            s = row[lb]
            if s is None:
                continue
            reach = steps_to_reach(s["trials"], target)
            done = [t["values"][0] for t in s["trials"] if t["state"] == "complete"]
            row[lb] = {"best": max(done) if done else None, "best_within_half": best_within(
                           s["trials"], row["random_steps"] // 2), "trial_steps": s["trial_steps"],
                       "pruned": s["counts"]["pruned"], "trials": len(s["trials"]), "steps_to_random_best": reach,
                       "ratio": None if reach is None else round(reach / row["random_steps"], 3)}
        row["random"] = {"best": target, "trial_steps": row["random_steps"]}
        rows.append(row)
    hw = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine()
    (out / "summary.json").write_text(json.dumps({"hardware": hw, "torch": torch.__version__, "trials": args.trials,
                                                  "budget": args.budget, "rows": rows}, indent=1))
    print(f"\n{hw}, torch {torch.__version__}; random: {args.trials} trials; TPE budget studies: ≤ {args.budget} "
          "trial-steps")
    print("| seed | random best (val) | random trial-steps | study | best (val) | trials (pruned) | trial-steps | "
          "steps to random's best | ratio |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for lb in labels[1:]:
            s = r.get(lb)
            if s is None:
                continue
            best = "—" if s["best"] is None else f"{s['best']:.4f}"
            print(f"| {r['seed']} | {r['random']['best']:.4f} | {r['random']['trial_steps']} | {lb} | {best} | "
                  f"{s['trials']} ({s['pruned']}) | {s['trial_steps']} | {s['steps_to_random_best'] or 'never'} | "
                  f"{s['ratio'] if s['ratio'] is not None else '—'} |")
    for lb in labels[1:]:
        met = [r[lb]["ratio"] is not None and r[lb]["ratio"] <= 0.5 for r in rows if r.get(lb)]
        print(f"{lb}: reached random search's best within half its compute in {sum(met)} of {len(met)} seeds")
        halves = [r[lb]["best_within_half"] for r in rows if r.get(lb) and r[lb]["best_within_half"] is not None]
        if halves and len(halves) == len(met):
            mean_random = sum(r["random"]["best"] for r in rows if r.get(lb)) / len(halves)
            print(f"{lb}: mean best within half the compute {sum(halves) / len(halves):.4f} vs random search's "
                  f"mean best {mean_random:.4f} over {len(halves)} seeds")
    pool = [t["values"][0] for seed in args.seeds if (st := load(out, "random", seed))
            for t in st["trials"] if t["state"] == "complete"]
    if pool:
        p = chance_baseline(pool, max(1, args.trials // 2), args.trials)
        print(f"chance: a sampler no better than random, with half the trials ({args.trials // 2} vs {args.trials}), "
              f"reaches random's best in {p:.2f} of seeds (resampled from the {len(pool)} random trials here); "
              f"in all {len(rows)} seeds: {p ** max(1, len(rows)):.2f}")
        summary = json.loads((out / "summary.json").read_text())
        summary["chance_per_seed"] = round(p, 3)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
