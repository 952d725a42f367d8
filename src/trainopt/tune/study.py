"""`trainopt tune`: an Optuna study over any recipe keys.

Each trial is an ordinary run of the recipe with the sampled values set (as `--set` would), in its own run
directory `trials/NNNN/` with its own report; its score is a metric of one stage's report entry (quality on the
validation split by default: tuning never looks at the test split unless asked). The loop's periodic validation
feeds Optuna's pruner: a trial's k-th evaluation is compared with the k-th evaluation of the others.

Storage is Optuna's RDB storage: a SQLite file in the run directory by default (a killed study resumes with
`--resume`), or a PostgreSQL URL shared by many workers and machines. Every worker heartbeats its running trial;
a trial whose worker died is marked failed after two missed heartbeats and the budget is re-opened for it, so
the study ends with exactly `search.trials` finished (complete or pruned) trials whatever the workers do.

Run directory: recipe.yaml (the study's recipe), study.db (SQLite default), trials/NNNN/ (one run each),
study.json + study.md (every trial, the best / Pareto trials, parameter importances, compute used),
best_recipe.yaml (single objective) or pareto/trial-NNNN.yaml (several), pareto.png (several objectives).
"""


from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ..errors import RecipeError, TrainoptError
from ..recipe import SearchSpec
from ..rundir import RunLock, claim, made_by_trainopt
from ..train.monitor import console
from .space import load_study_recipe
from .storage import open_study, optuna_module, safe_url, storage_url
from .summary import print_summary, summarize
from .trial import finish_from_report, make_objective




def counts(study) -> tuple[int, int]:
    from optuna.trial import TrialState

    done = running = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            done += 1
        elif t.state == TrialState.RUNNING:  # WAITING (enqueued) trials have not started: the next worker takes them
            running += 1
    return done, running


def spent_steps(study) -> int:
    """Trial-steps the study has used so far (optimizer steps summed over its trials, pruned and failed ones too)."""
    return sum(int(t.user_attrs.get("steps") or 0) for t in study.get_trials(deepcopy=False))


def work(study, objective, search: SearchSpec, run_dir: Path, deadline: float | None) -> str | None:
    """One worker: run trials until the study holds `search.trials` finished trials, the deadline passes or the
    trials have used `search.max_trial_steps` optimizer steps (running trials finish, so a budget can be exceeded
    by what was running when it was reached). While the last trials run elsewhere it waits; a trial whose worker
    died is failed and run again here. Returns why it stopped early: `search.max_failures` failed trials in a row
    (a study whose every trial fails would otherwise never stop), else None."""
    optuna = optuna_module()
    while deadline is None or time.time() < deadline:
        optuna.storages.fail_stale_trials(study)
        if search.max_trial_steps is not None and spent_steps(study) >= search.max_trial_steps:
            return None
        done, running = counts(study)
        if search.trials is not None and done >= search.trials:
            return None
        if search.trials is not None and done + running >= search.trials:
            time.sleep(min(5.0, search.heartbeat_s / 2))
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True,
                       callbacks=[lambda study_, _: _tidy_models(study_, search, run_dir)])
        failed = failures_in_a_row(study)
        if len(failed) >= search.max_failures:
            first = failed[0]
            why = first.user_attrs.get("error") or first.system_attrs.get("fail_reason") or "no message"
            return (f"the last {len(failed)} trials failed (search.max_failures: {search.max_failures}); the first "
                    f"of them, trial {first.number}: {str(why).splitlines()[0][:300]} — fix the recipe or the search "
                    "space, then run again with --resume")
    return None


def failures_in_a_row(study) -> list:
    """The finished trials at the end of the study (by number) that failed, oldest first."""
    from optuna.trial import TrialState

    done = sorted((t for t in study.get_trials(deepcopy=False)
                   if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)), key=lambda t: t.number)
    run = []
    for t in reversed(done):
        if t.state != TrialState.FAIL:
            break
        run.append(t)
    return run[::-1]


def _tidy_models(study, search: SearchSpec, run_dir: Path) -> None:
    """Delete trial model folders that are not (yet) among the best: a study of many runs must not fill the disk."""
    if search.keep_models == "all":
        return
    from optuna.trial import TrialState

    keep = set()
    if search.keep_models == "best":
        try:
            keep = {t.number for t in (study.best_trials if len(search.objectives) > 1 else [study.best_trial])}
        except ValueError:
            keep = set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if t.number in keep:
            continue
        stages = Path(t.user_attrs.get("run_dir", run_dir / "trials" / f"{t.number:04d}")) / "stages"
        if stages.is_dir():
            for model in stages.glob("*/model"):
                shutil.rmtree(model, ignore_errors=True)
            for ck in stages.glob("*/checkpoints"):
                shutil.rmtree(ck, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- command
def tune(recipe=None, out: str | Path | None = None, overrides: list[str] | None = None, resume: bool = False,
         overwrite: bool = False, storage: str | None = None, study_name: str | None = None, workers: int = 1,
         trials: int | None = None, timeout_s: float | None = None, worker_index: int | None = None,
         nproc: int = 1) -> dict:
    """Run (or join, or resume) a study; returns the study summary (also written to study.json)."""
    extra = list(overrides or [])
    if trials is not None:
        extra.append(f"search.trials={trials}")
    if timeout_s is not None:
        extra.append(f"search.timeout_s={timeout_s}")
    raw, recipe = load_study_recipe(recipe, extra)
    search = recipe.search
    run_dir = Path(out) if out else Path("runs") / f"tune-{recipe.name}"
    if workers < 1:
        raise RecipeError("--workers", f"{workers} is out of range", "use 1 or more")
    lock = _prepare_dir(run_dir, raw, resume, overwrite) if worker_index is None else None  # workers join it
    try:
        return _study(raw, recipe, search, run_dir, resume, storage, study_name, workers, worker_index, nproc)
    finally:
        if lock is not None:
            lock.release()


def _study(raw, recipe, search, run_dir: Path, resume: bool, storage, study_name, workers: int, worker_index,
           nproc: int) -> dict:
    url = storage_url(search, run_dir, storage)
    name = study_name or search.study_name or recipe.name
    seed = (search.seed if search.seed is not None else recipe.run.seed) + (worker_index or 0)
    study = open_study(raw, search, url, name, seed)
    if resume and worker_index is None and url.startswith("sqlite") and storage is None and not search.storage:
        _fail_running(study, search)  # the run directory's own SQLite file: nothing else can be running its trials
    deadline = time.time() + search.timeout_s if search.timeout_s else None
    console.rule(f"[bold]study {name}[/bold] · {search.sampler} · pruner {search.pruner.label()} · "
                 f"{search.trials or '∞'} trials"
                 + (f" · ≤ {search.max_trial_steps} trial-steps" if search.max_trial_steps else "")
                 + f" · {safe_url(url)}")
    stopped = None
    if worker_index is not None or workers == 1:
        stopped = work(study, make_objective(raw, search, run_dir, max(workers, 1), nproc, url), search, run_dir,
                       deadline)
        if worker_index is not None:
            if stopped:
                raise TrainoptError(stopped)
            return {}
    else:
        _spawn_workers(run_dir, url, name, workers, nproc)
    summary = summarize(study, search, run_dir, recipe.name)
    print_summary(summary)
    if stopped:  # the summary (with every failure) is written first
        raise TrainoptError(stopped)
    return summary


def _prepare_dir(run_dir: Path, raw: dict, resume: bool, overwrite: bool) -> RunLock:
    """The study directory, claimed and locked (rundir.py: only a study trainopt made is resumed or replaced)."""
    recipe_file = run_dir / "recipe.yaml"
    text = yaml.safe_dump(raw, sort_keys=False, width=110)
    if resume and made_by_trainopt(run_dir, "study") == "study" and recipe_file.is_file() and \
            yaml.safe_load(recipe_file.read_text()) != yaml.safe_load(text):
        raise RecipeError("", f"the recipe differs from the one {run_dir} was started with",
                          "resume with the same recipe and --set values, or pass --overwrite to start over")
    data = raw.get("data") or {}
    inputs = {f"data.{k}": data.get(k) for k in ("source", "validation_source", "test_source")}
    inputs.update({f"model.{k}": (raw.get("model") or {}).get(k) for k in ("path", "tokenizer")})
    lock = claim(run_dir, resume, overwrite, inputs, kind="study")
    tmp = recipe_file.with_name("recipe.yaml.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, recipe_file)
    return lock


def _fail_running(study, search: SearchSpec) -> None:
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if finish_from_report(study, t, search):
            console.print(f"trial {t.number} had finished before the interruption (its report is complete): kept")
            continue
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        console.print(f"[yellow]trial {t.number} was cut short by the interruption: marked failed[/yellow]")


def _spawn_workers(run_dir: Path, url: str, name: str, workers: int, nproc: int) -> None:
    """N local worker processes on one study (each a `trainopt tune --worker-index k`)."""
    cmd = [sys.executable, "-m", "trainopt", "tune", str(run_dir / "recipe.yaml"), "--out", str(run_dir),
           "--storage", url, "--study-name", name, "--workers", str(workers), "--nproc", str(nproc)]
    logs = run_dir / "workers"
    logs.mkdir(exist_ok=True)
    procs = []
    for k in range(workers):
        log = open(logs / f"worker-{k}.log", "ab")
        procs.append((subprocess.Popen([*cmd, "--worker-index", str(k)], stdout=log, stderr=subprocess.STDOUT),
                      log))
    console.print(f"{workers} workers started (logs in {logs})")
    failed = []
    for k, (p, log) in enumerate(procs):
        if p.wait() != 0:
            failed.append(k)
        log.close()
    if failed:
        console.print(f"[yellow]workers {failed} exited with an error (see {logs}); the study holds what the others "
                      "finished[/yellow]")


# ----------------------------------------------------------------------------------------------- summary
