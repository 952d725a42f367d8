"""One trial: its score, the pruning hook the training loop calls after each validation, and a trial run under
torchrun (its own entry point: `python -m trainopt.tune.trial`)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import yaml

from ..errors import TrainoptError
from ..recipe import QUALITY_METRICS, SearchSpec, read_yaml
from ..launch import torchrun_command
from ..runner import run
from ..train import distributed
from ..train.monitor import console
from .space import BudgetReached, trial_raw
from .storage import make_pruner, open_storage, optuna_module
from .summary import fmt




def metric_value(entry: dict, metric: str, split: str) -> float | None:
    """A metric of one stage's report entry (None when the run did not measure it)."""
    if metric in QUALITY_METRICS:
        section = entry.get("validation_quality" if split == "validation" else "quality") or {}
        return section.get(metric)
    for section in ("size", "speed", "cost"):
        if metric in (entry.get(section) or {}):
            return entry[section][metric]
    return None


def score(report: dict, search: SearchSpec) -> list[float]:
    stages = {s["name"]: s for s in report["stages"]}
    values = []
    for obj in search.objectives:
        entry = stages[obj.stage] if obj.stage else report["stages"][-1]
        v = metric_value(entry, obj.metric, obj.split)
        if v is None or not math.isfinite(v):
            where = "the validation split (set data.validation_fraction > 0)" if obj.metric in QUALITY_METRICS \
                and obj.split == "validation" else "this run"
            raise TrainoptError(f"objective {obj.metric} of stage {entry['name']} was not measured in {where}")
        values.append(float(v))
    return values


def _trial_steps(report: dict) -> int:
    return sum(int((s.get("training") or {}).get("steps") or 0) for s in report["stages"])


def _finished_attrs(report: dict) -> dict:
    """What a finished trial records beside its values: its optimizer steps and each stage's test quality."""
    return {"steps": _trial_steps(report),
            "test_quality": {s["name"]: s["quality"].get("accuracy", s["quality"].get("perplexity"))
                             for s in report["stages"]}}


def finish_from_report(study, frozen, search: SearchSpec) -> bool:
    """A trial cut short after its run had finished (report.json written, the study not yet told): scored from that
    report and marked complete, as its objective would have done. False (left to be failed) without one."""
    run_dir = frozen.user_attrs.get("run_dir")
    path = Path(run_dir) / "report.json" if run_dir else None
    if path is None or not path.is_file():
        return False
    try:
        report = json.loads(path.read_text())
        values = score(report, search)
    except (ValueError, KeyError, TypeError, TrainoptError):
        return False
    for key, value in _finished_attrs(report).items():
        study._storage.set_trial_user_attr(frozen._trial_id, key, value)
    study.tell(frozen.number, values[0] if len(values) == 1 else values)
    return True


# ------------------------------------------------------------------------------------------------ worker
def make_objective(raw: dict, search: SearchSpec, run_dir: Path, workers: int, nproc: int = 1,
                   url: str | None = None):
    optuna = optuna_module()

    def objective(trial):
        n_before = _live_before(trial)
        if search.trials is not None and n_before >= search.trials:
            trial.set_user_attr("error", "BudgetReached: started concurrently with the study's last trial")
            raise BudgetReached(f"the study already has {search.trials} trials")
        params = {}
        for key, p in search.space.items():
            if p.type == "categorical":
                params[key] = trial.suggest_categorical(key, p.choices)
            elif p.type == "int":
                params[key] = trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                params[key] = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
        trial_dir = run_dir / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(trial_dir.resolve()))
        trial.set_user_attr("host", socket.gethostname())
        shown = ", ".join(f"{k.split('.')[-1]}={fmt(v)}" for k, v in params.items())
        console.print(f"[bold]trial {trial.number}[/bold]: {shown}")
        on_eval, evals = make_pruning_hook(trial, search)
        try:
            if nproc > 1:
                report = _run_distributed_trial(trial, raw, search, params, trial_dir, nproc, workers, url)
            else:
                report = run(trial_raw(raw, search, params, workers), out=trial_dir, overwrite=True, on_eval=on_eval,
                             show_summary=False)
        except optuna.TrialPruned as e:
            console.print(f"trial {trial.number}: {e}")
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])
            if "steps" not in trial.user_attrs:
                trial.set_user_attr("steps", sum(evals["steps"].values()))
            console.print(f"[red]trial {trial.number} failed[/red]: {type(e).__name__}: {e}")
            if not isinstance(e, TrainoptError):
                (trial_dir / "error.txt").parent.mkdir(parents=True, exist_ok=True)
                (trial_dir / "error.txt").write_text(traceback.format_exc())
            raise
        values = score(report, search)
        for key, value in _finished_attrs(report).items():
            trial.set_user_attr(key, value)
        console.print(f"trial {trial.number}: " + ", ".join(f"{o.metric} {v:.4g}" for o, v in
                                                             zip(search.objectives, values)))
        return values[0] if len(values) == 1 else values

    return objective


def make_pruning_hook(trial, search: SearchSpec):
    """on_eval for the training loop: report the primary metric at each evaluation, raise TrialPruned when Optuna's
    pruner says so. Returns (on_eval, evals) — evals counts evaluations and the steps each stage reached."""
    optuna = optuna_module()
    primary = search.objectives[0]
    evals = {"n": 0, "steps": {}}

    def on_eval(stage_name: str, step: int, quality: dict) -> None:
        evals["steps"][stage_name] = step
        evals["n"] += 1
        value = quality.get(primary.metric)
        if not search.pruner.active or value is None or not math.isfinite(value):
            return
        trial.report(float(value), evals["n"])
        if trial.should_prune():
            trial.set_user_attr("steps", sum(evals["steps"].values()))
            trial.set_user_attr("pruned_at_eval", evals["n"])
            raise optuna.TrialPruned(f"pruned at evaluation {evals['n']} ({primary.metric} {value:.4f})")

    return on_eval, evals


class TrialPrunedExit(TrainoptError):
    """Stops every rank of a distributed trial that the pruner cut: a controlled stop, exit status 0."""

    exit_code = 0


TRIAL_ENV = "TRAINOPT_TRIAL"  # set by the tune worker for a trial it runs under torchrun


def _run_distributed_trial(trial, raw: dict, search: SearchSpec, params: dict, trial_dir: Path, nproc: int,
                           workers: int, url: str) -> dict:
    """Run one trial under torchrun with `nproc` ranks. The ranks read the same recipe file (the same parameters);
    rank 0 alone talks to the study (reports, asks the pruner) and broadcasts the pruning decision to the others."""
    optuna = optuna_module()
    recipe_file = trial_dir.parent / f"{trial.number:04d}.yaml"
    recipe_file.parent.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(yaml.safe_dump(trial_raw(raw, search, params, max(workers, nproc)), sort_keys=False))
    env = {**os.environ, TRIAL_ENV: json.dumps({"storage": url, "study": trial.study.study_name,
                                                "trial_id": trial._trial_id, "search": search.model_dump(mode="json")})}
    log = trial_dir.parent / f"{trial.number:04d}.log"
    with open(log, "wb") as f:
        rc = subprocess.call(torchrun_command(nproc, ["trainopt.tune", str(recipe_file), str(trial_dir)]), env=env,
                             stdout=f, stderr=subprocess.STDOUT)
    pruned = trial_dir / "pruned.json"
    if pruned.is_file():
        raise optuna.TrialPruned(json.loads(pruned.read_text())["message"])
    if rc != 0 or not (trial_dir / "report.json").is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
        raise TrainoptError(f"the trial's {nproc}-process run failed (exit {rc}): {' '.join(tail)[:300]} (log: {log})")
    return json.loads((trial_dir / "report.json").read_text())


def trial_hook_from_env(dd, run_dir: Path):
    """In a trial's ranks under torchrun: the pruning hook. Rank 0 re-attaches to the study's running trial and
    decides; every rank receives the decision, so all stop together."""
    spec = os.environ.get(TRIAL_ENV)
    if not spec:
        return None
    info = json.loads(spec)
    search = SearchSpec.model_validate(info["search"])
    hook = None
    if dd.is_main:
        optuna = optuna_module()
        storage = open_storage(info["storage"], search.heartbeat_s)
        study = optuna.load_study(study_name=info["study"], storage=storage, pruner=make_pruner(search))
        hook, _ = make_pruning_hook(optuna.trial.Trial(study, info["trial_id"]), search)

    def on_eval(stage_name: str, step: int, quality: dict) -> None:
        message = None
        if hook is not None:
            try:
                hook(stage_name, step, quality)
            except Exception as e:  # optuna.TrialPruned
                if type(e).__name__ != "TrialPruned":
                    raise
                message = str(e)
                (Path(run_dir) / "pruned.json").write_text(json.dumps({"message": message}))
        message = distributed.broadcast_object(dd, message)
        if message:
            raise TrialPrunedExit(f"trial pruned: {message}")

    return on_eval




def _live_before(trial) -> int:
    """Trials numbered below this one that count against the budget (finished, running or waiting)."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return sum(1 for t in trial.study.get_trials(deepcopy=False, states=states) if t.number < trial.number)


def main(argv: list[str] | None = None) -> int:
    """`python -m trainopt.tune RECIPE OUT`: one rank of a trial under torchrun (_run_distributed_trial starts it).
    Rank 0 reports to the study and asks its pruner (trial_hook_from_env); a pruned trial stops every rank, status 0."""
    recipe_file, out = argv if argv is not None else sys.argv[1:]
    dd, _ = distributed.from_env(read_yaml(Path(recipe_file)).get("run", {}).get("device", "auto"))
    restarted = distributed.restarted()  # a worker torchrun restarted after a failure continues the trial
    try:
        run(recipe_file, out=out, overwrite=not restarted, resume=restarted, on_eval=trial_hook_from_env(dd, Path(out)))
    except TrainoptError as e:
        print(f"trainopt: {e}", file=sys.stderr)
        return e.exit_code
    distributed.destroy()
    return 0
