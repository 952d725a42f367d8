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

import copy
import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import yaml

from .errors import RecipeError, TrainoptError
from .recipe import QUALITY_METRICS, Recipe, SearchSpec, apply_overrides, check_paths, dump_recipe, \
    parse_recipe, read_yaml, resolve_recipe_path, set_path
from .train.monitor import console


class BudgetReached(Exception):
    """Raised inside a trial that another worker's concurrent trial made one too many."""


# ----------------------------------------------------------------------------------------------- recipes
def load_study_recipe(spec, overrides: list[str] | None) -> tuple[dict, Recipe]:
    """The raw recipe (after --set) and its validated form; the search block must exist and fit the recipe."""
    if isinstance(spec, dict):
        raw = copy.deepcopy(spec)
    else:
        raw = read_yaml(resolve_recipe_path(str(spec) if spec is not None else None))
    raw = apply_overrides(raw, overrides or [])
    recipe = parse_recipe(raw)
    if recipe.search is None:
        raise RecipeError("search", "this recipe has no search: block", "add one (see docs/methods/tune.md) or use "
                          "`trainopt run`")
    check_paths(recipe)
    check_space(raw, recipe.search)
    return raw, recipe


def base_of(raw: dict) -> dict:
    """The recipe every trial starts from: the study recipe without its search block."""
    base = copy.deepcopy(raw)
    base.pop("search", None)
    return base


def trial_raw(raw: dict, search: SearchSpec, params: dict, workers: int) -> dict:
    """One trial's recipe: the base with the sampled values set and validation measured when scored on it."""
    out = base_of(raw)
    for key, value in params.items():
        set_path(out, key, value)
    out.setdefault("measure", {})
    if any(o.split == "validation" and o.metric in QUALITY_METRICS for o in search.objectives):
        out["measure"]["validation"] = True
    out.setdefault("run", {})
    if workers > 1:  # share the cores, and keep several progress bars from fighting over the terminal
        out["run"].setdefault("threads", max(1, (os.cpu_count() or 1) // workers))
        out["run"]["progress"] = False
    return out


def check_space(raw: dict, search: SearchSpec) -> None:
    """Every searched key must exist and accept its range's ends (and every choice): found before trial 1."""
    own = [k for k in search.space if k.split(".")[0] == "search"]
    if own:
        raise RecipeError(f"search.space.{own[0]}", "the search cannot tune its own settings", "remove the key")
    for key, p in search.space.items():
        values = p.choices if p.type == "categorical" else [p.low, p.high]
        if p.type == "int":
            values = [int(v) for v in values]
        for value in values:
            try:
                parse_recipe(set_path(base_of(raw), key, value))
            except RecipeError as e:
                problem = e.problem if e.key in ("", key) else f"{e.key}: {e.problem}"
                raise RecipeError(f"search.space.{key}", f"value {value!r} does not fit the recipe ({problem})",
                                  e.fix or "check the key path and the range") from None


def recipe_digest(raw: dict) -> str:
    text = yaml.safe_dump(base_of(raw), sort_keys=True) + json.dumps(raw["search"]["space"] if raw.get("search")
                                                                       else {}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ optuna
def _optuna():
    try:
        import optuna
    except ImportError as e:  # a pinned dependency; only a broken install gets here
        raise TrainoptError(f"trainopt tune needs optuna ({e}); run `make install`") from None
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def storage_url(search: SearchSpec, run_dir: Path, override: str | None) -> str:
    url = override or search.storage
    if url is None:
        return f"sqlite:///{(run_dir / 'study.db').resolve()}"
    if not (url.startswith("sqlite:///") or url.startswith("postgresql")):
        raise RecipeError("search.storage", f"unsupported storage '{url}'",
                          "use sqlite:///path.db or postgresql://user@host:port/db")
    return url


def open_storage(url: str, heartbeat_s: int):
    optuna = _optuna()
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_s,
                                              grace_period=2 * heartbeat_s)
        except Exception as e:  # SQLAlchemy/driver errors: an unreachable server, bad credentials, no driver
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            racing = any(m in msg for m in ("already exists", "duplicate key", "UniqueViolation"))
            if racing and attempt < 4:  # workers starting together race to create the tables
                time.sleep(1.0 + attempt)
                continue
            raise TrainoptError(f"cannot open the study storage {_safe_url(url)}: {msg}") from None


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':')[0]}:***@{host}" if ":" in cred else url
    return url


def make_sampler(search: SearchSpec, seed: int):
    s = _optuna().samplers
    if search.sampler == "random":
        return s.RandomSampler(seed=seed)
    if search.sampler == "grid":
        return s.GridSampler({k: p.grid() for k, p in search.space.items()}, seed=seed)
    if search.sampler == "gp":
        return s.GPSampler(seed=seed, n_startup_trials=search.startup_trials)
    if search.sampler == "nsga2":
        return s.NSGAIISampler(seed=seed, population_size=max(4, min(50, (search.trials or 20) // 2)))
    return s.TPESampler(seed=seed, n_startup_trials=search.startup_trials, multivariate=True)


def make_pruner(search: SearchSpec):
    p, pr = search.pruner, _optuna().pruners
    inner = _base_pruner(p, pr)
    if p.patience is None:
        return inner
    return pr.PatientPruner(None if p.name == "none" else inner, patience=p.patience, min_delta=p.min_delta)


def _base_pruner(p, pr):
    if p.name == "median":
        return pr.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_evals)
    if p.name == "percentile":
        return pr.PercentilePruner(p.percentile, n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_evals)
    if p.name == "halving":
        return pr.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.name == "hyperband":
        return pr.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return pr.NopPruner()


def open_study(raw: dict, search: SearchSpec, url: str, name: str, seed: int):
    optuna = _optuna()
    storage = open_storage(url, search.heartbeat_s)
    try:
        study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                    sampler=make_sampler(search, seed), pruner=make_pruner(search),
                                    directions=[o.direction for o in search.objectives])
    except ValueError as e:  # e.g. an existing study with other directions
        raise TrainoptError(f"study '{name}' in {_safe_url(url)}: {e}") from None
    digest = recipe_digest(raw)
    found = study.user_attrs.get("recipe_digest")
    if found is None:
        study.set_user_attr("recipe_digest", digest)
        study.set_user_attr("objectives", [o.model_dump() for o in search.objectives])
        for params in search.enqueue:  # known settings first (e.g. the recipe's own values)
            study.enqueue_trial(params, skip_if_exists=True)
    elif found != digest:
        raise TrainoptError(f"study '{name}' in {_safe_url(url)} was started with a different recipe or search "
                            "space; use another --study-name (or the same recipe)")
    return study


# ---------------------------------------------------------------------------------------------- scoring
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


# ------------------------------------------------------------------------------------------------ worker
def make_objective(raw: dict, search: SearchSpec, run_dir: Path, workers: int, nproc: int = 1,
                   url: str | None = None):
    optuna = _optuna()

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
        shown = ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in params.items())
        console.print(f"[bold]trial {trial.number}[/bold]: {shown}")
        on_eval, evals = make_pruning_hook(trial, search)
        from .runner import run

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
        trial.set_user_attr("steps", _trial_steps(report))
        trial.set_user_attr("test_quality", {s["name"]: s["quality"].get("accuracy", s["quality"].get("perplexity"))
                                             for s in report["stages"]})
        console.print(f"trial {trial.number}: " + ", ".join(f"{o.metric} {v:.4g}" for o, v in
                                                             zip(search.objectives, values)))
        return values[0] if len(values) == 1 else values

    return objective


def make_pruning_hook(trial, search: SearchSpec):
    """on_eval for the training loop: report the primary metric at each evaluation, raise TrialPruned when Optuna's
    pruner says so. Returns (on_eval, evals) — evals counts evaluations and the steps each stage reached."""
    optuna = _optuna()
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
    optuna = _optuna()
    recipe_file = trial_dir.parent / f"{trial.number:04d}.yaml"
    recipe_file.parent.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(yaml.safe_dump(trial_raw(raw, search, params, max(workers, nproc)), sort_keys=False))
    env = {**os.environ, TRIAL_ENV: json.dumps({"storage": url, "study": trial.study.study_name,
                                                "trial_id": trial._trial_id, "search": search.model_dump(mode="json")})}
    log = trial_dir.parent / f"{trial.number:04d}.log"
    with open(log, "wb") as f:
        rc = subprocess.call([sys.executable, "-m", "trainopt", "run", str(recipe_file), "--out", str(trial_dir),
                              "--overwrite", "--nproc", str(nproc)], env=env, stdout=f, stderr=subprocess.STDOUT)
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
    from .train import distributed

    info = json.loads(spec)
    search = SearchSpec.model_validate(info["search"])
    hook = None
    if dd.is_main:
        optuna = _optuna()
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


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


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


def work(study, objective, search: SearchSpec, run_dir: Path, deadline: float | None) -> None:
    """One worker: run trials until the study holds `search.trials` finished trials, the deadline passes or the
    trials have used `search.max_trial_steps` optimizer steps (running trials finish, so a budget can be exceeded
    by what was running when it was reached). While the last trials run elsewhere it waits; a trial whose worker
    died is failed and run again here."""
    optuna = _optuna()
    while deadline is None or time.time() < deadline:
        optuna.storages.fail_stale_trials(study)
        if search.max_trial_steps is not None and spent_steps(study) >= search.max_trial_steps:
            return
        done, running = counts(study)
        if search.trials is not None and done >= search.trials:
            return
        if search.trials is not None and done + running >= search.trials:
            time.sleep(min(5.0, search.heartbeat_s / 2))
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True,
                       callbacks=[lambda study_, _: _tidy_models(study_, search, run_dir)])


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
    if worker_index is None:
        _prepare_dir(run_dir, raw, resume, overwrite)
    url = storage_url(search, run_dir, storage)
    name = study_name or search.study_name or recipe.name
    seed = (search.seed if search.seed is not None else recipe.run.seed) + (worker_index or 0)
    study = open_study(raw, search, url, name, seed)
    if resume and worker_index is None and url.startswith("sqlite") and storage is None and not search.storage:
        _fail_running(study)  # the run directory's own SQLite file: nothing else can be running its trials
    deadline = time.time() + search.timeout_s if search.timeout_s else None
    console.rule(f"[bold]study {name}[/bold] · {search.sampler} · pruner {search.pruner.label()} · "
                 f"{search.trials or '∞'} trials"
                 + (f" · ≤ {search.max_trial_steps} trial-steps" if search.max_trial_steps else "")
                 + f" · {_safe_url(url)}")
    if worker_index is not None or workers == 1:
        work(study, make_objective(raw, search, run_dir, max(workers, 1), nproc, url), search, run_dir, deadline)
        if worker_index is not None:
            return {}
    else:
        _spawn_workers(run_dir, url, name, workers, nproc)
    summary = summarize(study, search, run_dir, recipe.name)
    print_summary(summary)
    return summary


def _prepare_dir(run_dir: Path, raw: dict, resume: bool, overwrite: bool) -> None:
    recipe_file = run_dir / "recipe.yaml"
    text = yaml.safe_dump(raw, sort_keys=False, width=110)
    if resume:
        if recipe_file.is_file() and yaml.safe_load(recipe_file.read_text()) != yaml.safe_load(text):
            raise RecipeError("", f"the recipe differs from the one {run_dir} was started with",
                              "resume with the same recipe and --set values, or pass --overwrite to start over")
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise TrainoptError(f"run directory {run_dir} already exists; pass --resume to continue the study, "
                                "--overwrite to replace it, or --out DIR for a new one")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = recipe_file.with_name("recipe.yaml.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, recipe_file)


def _fail_running(study) -> None:
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
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
def summarize(study, search: SearchSpec, run_dir: Path, recipe_name: str) -> dict:
    from optuna.trial import TrialState

    trials = []
    for t in study.get_trials(deepcopy=False):
        error = t.user_attrs.get("error") or t.system_attrs.get("fail_reason")
        if t.state == TrialState.FAIL and not error:
            error = "interrupted: its worker stopped (killed, or no heartbeat) before the trial finished"
        if t.state == TrialState.FAIL and error and "BudgetReached" in error:
            continue  # a surplus trial another worker's concurrent start made: never ran
        trials.append({"number": t.number, "state": t.state.name.lower(), "params": t.params,
                       "values": t.values, "steps": t.user_attrs.get("steps"),
                       "pruned_at_eval": t.user_attrs.get("pruned_at_eval"),
                       "test_quality": t.user_attrs.get("test_quality"), "error": error,
                       "duration_s": round(t.duration.total_seconds(), 2) if t.duration else None,
                       "run_dir": t.user_attrs.get("run_dir"), "host": t.user_attrs.get("host")})
    objectives = [o.model_dump() for o in search.objectives]
    complete = [t for t in trials if t["state"] == "complete"]
    summary = {"study": study.study_name, "recipe": recipe_name, "sampler": search.sampler,
               "pruner": search.pruner.label(), "objectives": objectives, "space": list(search.space),
               "trials": trials,
               "counts": {s: sum(t["state"] == s for t in trials) for s in ("complete", "pruned", "fail", "running")},
               "trial_steps": sum(t["steps"] or 0 for t in trials)}
    best = []
    if complete:
        try:
            best = [t.number for t in (study.best_trials if len(objectives) > 1 else [study.best_trial])]
        except ValueError:
            best = []
    summary["best" if len(objectives) == 1 else "pareto_front"] = [t for t in trials if t["number"] in best]
    summary["importances"] = _importances(study, search)
    _write_best_recipes(run_dir, summary, len(objectives))
    if len(objectives) > 1 and complete:
        summary["pareto_plot"] = _pareto_plot(run_dir, trials, best, search)
    for name, text in (("study.json", json.dumps(summary, indent=1)), ("study.md", to_markdown(summary)),
                       ("study.html", to_html(summary, run_dir))):
        tmp = run_dir / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, run_dir / name)
    return summary


def _importances(study, search: SearchSpec) -> dict:
    """Optuna's parameter importances (fANOVA) per objective; empty until enough trials finished."""
    optuna = _optuna()
    out = {}
    for i, obj in enumerate(search.objectives):
        try:
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=lambda t, i=i: t.values[i])
            out[obj.metric] = {k: round(float(v), 4) for k, v in imp.items()}
        except (ValueError, RuntimeError, ZeroDivisionError):
            out[obj.metric] = {}
    return out


def _write_best_recipes(run_dir: Path, summary: dict, n_objectives: int) -> None:
    members = summary.get("best") or summary.get("pareto_front") or []
    if n_objectives > 1:
        shutil.rmtree(run_dir / "pareto", ignore_errors=True)
    for t in members:
        src = Path(t["run_dir"]) / "recipe.yaml" if t.get("run_dir") else None
        if src is None or not src.is_file():
            continue
        dest = run_dir / ("best_recipe.yaml" if n_objectives == 1 else f"pareto/trial-{t['number']:04d}.yaml")
        dest.parent.mkdir(parents=True, exist_ok=True)
        raw = yaml.safe_load(src.read_text())
        raw.get("measure", {}).pop("validation", None)
        header = f"# trial {t['number']} of study {summary['study']}: " + ", ".join(
            f"{o['metric']} {v:.4g}" for o, v in zip(summary["objectives"], t["values"])) + "\n"
        dest.write_text(header + dump_recipe(parse_recipe(raw)), encoding="utf-8")


def _pareto_plot(run_dir: Path, trials: list[dict], front: list[int], search: SearchSpec) -> str | None:
    """Every complete trial on the first two objectives, the Pareto front highlighted (matplotlib, PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    xs = [(t["values"][0], t["values"][1], t["number"] in front, t["number"]) for t in trials
          if t["state"] == "complete" and t["values"]]
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    ax.scatter([x for x, _, f, _ in xs if not f], [y for _, y, f, _ in xs if not f], c="#9aa5b1", s=22,
               label="trial")
    pts = sorted((x, y, n) for x, y, f, n in xs if f)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", c="#d9480f", ms=6, label="Pareto front")
    for x, y, n in pts:
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    o0, o1 = search.objectives[0], search.objectives[1]
    ax.set_xlabel(f"{o0.metric} ({o0.direction})")
    ax.set_ylabel(f"{o1.metric} ({o1.direction})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = run_dir / "pareto.png"
    fig.savefig(path)
    plt.close(fig)
    return path.name


def to_markdown(summary: dict) -> str:
    objs = summary["objectives"]
    lines = [f"# Study {summary['study']} ({summary['recipe']})", "",
             f"sampler **{summary['sampler']}**, pruner **{summary['pruner']}**; objectives: " +
             ", ".join(f"{o['metric']} ({o['direction']}, {o['stage'] or 'last stage'}, {o['split']})" for o in objs),
             "", f"trials: {summary['counts']}; trial-steps used: {summary['trial_steps']}", ""]
    members = summary.get("best") or summary.get("pareto_front") or []
    title = "Best trial" if "best" in summary else "Pareto front"
    params = summary["space"]
    head = ["trial", "state", *[o["metric"] for o in objs], "steps", *[p.split(".")[-1] for p in params]]

    def row(t):
        vals = t["values"] or [None] * len(objs)
        return [str(t["number"]), t["state"], *[("—" if v is None else f"{v:.4g}") for v in vals],
                str(t["steps"] if t["steps"] is not None else "—"),
                *[_fmt(t["params"].get(p)) if p in t["params"] else "—" for p in params]]

    def table(rows):
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *["| " + " | ".join(r) + " |" for r in rows]]

    lines += [f"## {title}", "", *table([row(t) for t in members]), ""]
    if summary.get("pareto_plot"):
        lines += [f"![Pareto front]({summary['pareto_plot']})", ""]
    if any(summary["importances"].values()):
        lines += ["## Parameter importances (fANOVA)", ""]
        for metric, imp in summary["importances"].items():
            lines.append(f"- {metric}: " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()))
        lines.append("")
    lines += ["## All trials", "", *table([row(t) for t in summary["trials"]])]
    failed = [t for t in summary["trials"] if t["error"]]
    if failed:
        lines += ["", "## Failed trials", ""] + [f"- trial {t['number']}: {t['error']}" for t in failed]
    return "\n".join(lines) + "\n"


def to_html(summary: dict, run_dir: Path) -> str:
    """study.html: the same tables as study.md and the Pareto plot inlined (self-contained, opened from disk)."""
    import base64
    import html as h

    from .report.html import page, table

    objs, params = summary["objectives"], summary["space"]
    head = ["trial", "state", *[o["metric"] for o in objs], "steps", *[p.split(".")[-1] for p in params], "error"]

    def row(t):
        vals = t["values"] or [None] * len(objs)
        return [str(t["number"]), t["state"], *["—" if v is None else f"{v:.4g}" for v in vals],
                str(t["steps"] if t["steps"] is not None else "—"),
                *[_fmt(t["params"][p]) if p in t["params"] else "—" for p in params], (t["error"] or "")[:120]]

    members = summary.get("best") or summary.get("pareto_front") or []
    plot = ""
    if summary.get("pareto_plot") and (run_dir / summary["pareto_plot"]).is_file():
        data = base64.b64encode((run_dir / summary["pareto_plot"]).read_bytes()).decode()
        plot = f"<img alt='Pareto front' src='data:image/png;base64,{data}'>"
    imp = "".join(f"<p><b>{h.escape(m)}</b>: " + h.escape(", ".join(f"{k} {v:.2f}" for k, v in d.items())) + "</p>"
                  for m, d in summary["importances"].items() if d)
    subtitle = h.escape(f"sampler {summary['sampler']}, pruner {summary['pruner']}; trials {summary['counts']}; "
                        f"trial-steps {summary['trial_steps']}")
    return page(f"study {summary['study']} ({summary['recipe']})", subtitle, [
        ("Best trial" if "best" in summary else "Pareto front", table(head, [row(t) for t in members]) + plot),
        ("Parameter importances (fANOVA)", imp),
        ("All trials", table(head, [row(t) for t in summary["trials"]]))])


def print_summary(summary: dict) -> None:
    from rich.table import Table

    objs = summary["objectives"]
    members = summary.get("best") or summary.get("pareto_front") or []
    table = Table(title=f"study {summary['study']}: {'best trial' if 'best' in summary else 'Pareto front'} "
                        f"({summary['counts']['complete']} complete, {summary['counts']['pruned']} pruned, "
                        f"{summary['counts']['fail']} failed; {summary['trial_steps']} trial-steps)")
    for h in ["trial", *[o["metric"] for o in objs], *[p.split(".")[-1] for p in summary["space"]]]:
        table.add_column(h)
    for t in members:
        table.add_row(str(t["number"]), *[f"{v:.4g}" for v in t["values"]],
                      *[_fmt(t["params"].get(p)) for p in summary["space"]])
    console.print(table)
