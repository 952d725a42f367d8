"""`trainopt tune`: studies over recipe keys (tiny model, tiny data), validation, resume, failures, PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from trainopt.cli import main
from trainopt.errors import RecipeError
from trainopt.tune.space import load_study_recipe
from trainopt.tune.study import tune

from .conftest import classification_recipe

LR = {"stages.finetune.optimizer.lr": {"type": "float", "low": 1e-5, "high": 3e-2, "log": True}}


def study_recipe(tiny_bert_dir, reviews_dir, **search) -> dict:
    r = classification_recipe(tiny_bert_dir, reviews_dir, epochs=2, eval_every=5, checkpoint_every=0)
    r["data"]["validation_fraction"] = 0.2
    r["measure"]["latency"] = False
    r["run"]["tensorboard"] = False
    r["search"] = {"space": dict(LR), "trials": 4, "startup_trials": 2,
                   "pruner": {"name": "median", "startup_trials": 1, "warmup_evals": 0}, **search}
    return r


def write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_tpe_with_median_pruning(tmp_path, tiny_bert_dir, reviews_dir):
    r = study_recipe(tiny_bert_dir, reviews_dir, trials=5,
                     space={**LR, "stages.finetune.batch_size": {"type": "categorical", "choices": [8, 16]},
                            "stages.finetune.schedule.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3}})
    out = tmp_path / "study"
    s = tune(r, out=out)
    assert s["counts"]["complete"] + s["counts"]["pruned"] == 5 and s["counts"]["fail"] == 0
    assert [t["number"] for t in s["trials"]] == list(range(5))
    steps_full = {t["number"]: t["steps"] for t in s["trials"] if t["state"] == "complete"}
    assert all(v > 0 for v in steps_full.values()) and s["trial_steps"] == sum(t["steps"] for t in s["trials"])
    for t in s["trials"]:
        assert set(t["params"]) == set(r["search"]["space"])
        assert Path(t["run_dir"]).name == f"{t['number']:04d}"
        if t["state"] == "complete":  # each trial is a run with its own report, scored on the validation split
            report = json.loads((Path(t["run_dir"]) / "report.json").read_text())
            assert t["values"] == [report["stages"][-1]["validation_quality"]["accuracy"]]
            assert report["recipe"]["stages"][0]["optimizer"]["lr"] == pytest.approx(
                t["params"]["stages.finetune.optimizer.lr"])
        else:  # a pruned trial stopped early: fewer steps than any finished trial of its batch size
            assert t["pruned_at_eval"] >= 1 and t["steps"] < max(steps_full.values())
    (best,) = s["best"]
    assert best["values"][0] == max(t["values"][0] for t in s["trials"] if t["state"] == "complete")
    # Only the best trial keeps its model folder; its recipe is exported and runs as it is.
    kept = sorted(p.parent.parent.parent.name for p in (out / "trials").glob("*/stages/*/model"))
    assert kept == [f"{best['number']:04d}"]
    exported = (out / "best_recipe.yaml").read_text()
    assert f"trial {best['number']}" in exported.splitlines()[0]
    assert yaml.safe_load(exported)["stages"][0]["optimizer"]["lr"] == pytest.approx(
        best["params"]["stages.finetune.optimizer.lr"])
    assert "search" not in yaml.safe_load(exported)
    md = (out / "study.md").read_text()
    assert "## Best trial" in md and "## All trials" in md
    assert json.loads((out / "study.json").read_text())["best"][0]["number"] == best["number"]
    assert set(s["importances"]["accuracy"]) <= set(r["search"]["space"])


def test_compute_budget_in_trial_steps_and_percentile_pruner(tmp_path, tiny_bert_dir, reviews_dir):
    # One step of budget: the first trial uses it up, no second trial starts.
    r = study_recipe(tiny_bert_dir, reviews_dir, trials=None, max_trial_steps=1, sampler="random",
                     pruner={"name": "none"})
    s = tune(r, out=tmp_path / "one")
    assert len(s["trials"]) == 1
    per_trial = s["trial_steps"]
    # A budget one step above one trial's steps: exactly two trials (the second may overrun; none after it).
    r["search"]["max_trial_steps"] = per_trial + 1
    assert len(tune(r, out=tmp_path / "two")["trials"]) == 2
    # The percentile pruner stops trials below the 50th percentile of earlier trials at the same evaluation.
    r = study_recipe(tiny_bert_dir, reviews_dir, trials=4, sampler="random",
                     pruner={"name": "percentile", "percentile": 50.0, "startup_trials": 1, "warmup_evals": 0})
    s = tune(r, out=tmp_path / "pct")
    assert s["counts"]["complete"] + s["counts"]["pruned"] == 4 and s["counts"]["fail"] == 0
    assert s["pruner"] == "percentile"


def test_grid_search_visits_every_point(tmp_path, tiny_bert_dir, reviews_dir):
    r = study_recipe(tiny_bert_dir, reviews_dir, sampler="grid", trials=4, pruner={"name": "none"},
                     space={"stages.finetune.optimizer.lr": {"type": "categorical", "choices": [1e-3, 3e-3]},
                            "stages.finetune.max_steps": {"type": "int", "low": 4, "high": 8, "step": 4}})
    s = tune(r, out=tmp_path / "grid")
    seen = {(t["params"]["stages.finetune.optimizer.lr"], t["params"]["stages.finetune.max_steps"])
            for t in s["trials"]}
    assert seen == {(1e-3, 4), (1e-3, 8), (3e-3, 4), (3e-3, 8)}
    assert sorted(t["steps"] for t in s["trials"]) == [4, 4, 8, 8]


def test_multi_objective_pareto_front(tmp_path, tiny_bert_dir, reviews_dir):
    r = study_recipe(tiny_bert_dir, reviews_dir, sampler="nsga2", trials=4, pruner={"name": "none"},
                     objectives=[{"metric": "accuracy"}, {"metric": "disk_bytes"}],
                     space={**LR, "stages.int8.method": {"type": "categorical", "choices": ["dynamic_int8"]},
                            "stages.int8.embeddings": {"type": "categorical", "choices": [True, False]}})
    r["stages"].append({"kind": "quantize", "name": "int8"})
    out = tmp_path / "mo"
    s = tune(r, out=out)
    front = s["pareto_front"]
    assert front and "best" not in s
    assert [o["direction"] for o in s["objectives"]] == ["maximize", "minimize"]
    complete = [t for t in s["trials"] if t["state"] == "complete"]
    for t in complete:  # no trial dominates a front member
        for f in front:
            assert not (t["values"][0] >= f["values"][0] and t["values"][1] <= f["values"][1]
                        and t["values"] != f["values"])
    assert sorted(p.name for p in (out / "pareto").glob("*.yaml")) == [f"trial-{f['number']:04d}.yaml" for f in front]
    assert (out / "pareto.png").stat().st_size > 1000 and "pareto.png" in (out / "study.md").read_text()
    assert "data:image/png;base64," in (out / "study.html").read_text()  # the plot inlined: opened from disk


def test_failed_trial_is_recorded_and_the_study_continues(tmp_path, tiny_bert_dir, reviews_dir):
    # `perplexity` is not a classification metric: the run refuses it when it starts, so those trials fail.
    r = study_recipe(tiny_bert_dir, reviews_dir, sampler="grid", trials=2, pruner={"name": "none"},
                     space={"stages.finetune.metric": {"type": "categorical", "choices": ["accuracy", "perplexity"]}})
    s = tune(r, out=tmp_path / "f")
    states = {t["params"]["stages.finetune.metric"]: t for t in s["trials"]}
    assert states["accuracy"]["state"] == "complete"
    assert states["perplexity"]["state"] == "fail" and "perplexity" in states["perplexity"]["error"]
    assert "## Failed trials" in (tmp_path / "f" / "study.md").read_text()


def test_a_study_whose_trials_keep_failing_stops_with_the_first_error(tmp_path, tiny_bert_dir, reviews_dir):
    """Every trial fails (a metric classification has not): after search.max_failures in a row the study stops with
    the first failure's message instead of running failed trials forever; the summary is written first."""
    from trainopt.errors import TrainoptError

    r = study_recipe(tiny_bert_dir, reviews_dir, sampler="random", trials=10, max_failures=2, pruner={"name": "none"},
                     space={"stages.finetune.metric": {"type": "categorical", "choices": ["perplexity"]}})
    with pytest.raises(TrainoptError, match="the last 2 trials failed .* trial 0: .*perplexity"):
        tune(r, out=tmp_path / "f")
    summary = json.loads((tmp_path / "f" / "study.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["fail", "fail"]


@pytest.mark.parametrize("search, key", [
    ({"space": {"stages.finetune.optimiser.lr": {"type": "float", "low": 1e-5, "high": 1e-3}}},
     "search.space.stages.finetune.optimiser.lr"),
    ({"space": {"stages.finetune.optimizer.lr": {"type": "float", "low": 1e-5, "high": 20.0}}},
     "search.space.stages.finetune.optimizer.lr"),
    ({"space": {"stages.finetune.optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-5}}}, "search.space"),
    ({"space": LR, "sampler": "grid"}, "search"),
    ({"space": LR, "objectives": [{"metric": "accuracy"}, {"metric": "disk_bytes"}]}, "search"),
    ({"space": LR, "objectives": [{"metric": "acuracy"}]}, "search.objectives.0"),
    ({"space": LR, "objectives": [{"metric": "latency_ms_b64_p50"}], "pruner": {"name": "none"}},
     "search.objectives.0.metric"),
    ({"space": LR, "objectives": [{"metric": "accuracy", "stage": "finetuned"}]}, "search.objectives.0.stage"),
    ({"space": {}}, "search.space"),
])
def test_bad_search_blocks_are_recipe_errors(tmp_path, tiny_bert_dir, reviews_dir, capsys, search, key):
    r = classification_recipe(tiny_bert_dir, reviews_dir)
    r["search"] = search
    with pytest.raises(RecipeError) as e:
        load_study_recipe(r, [])
    assert e.value.key.startswith(key), e.value
    path = write(tmp_path / "r.yaml", r)
    assert main(["tune", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("trainopt: recipe error: search") and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing was created


def test_recipe_without_search_block(tmp_path, tiny_bert_dir, reviews_dir, capsys):
    path = write(tmp_path / "r.yaml", classification_recipe(tiny_bert_dir, reviews_dir))
    assert main(["tune", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "no search: block" in capsys.readouterr().err


def _cli(*args, env=None) -> list[str]:
    return [sys.executable, "-m", "trainopt", "tune", *map(str, args)]


def _env(**extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", **extra}


def test_killed_study_resumes_with_exact_trial_count(tmp_path, tiny_bert_dir, reviews_dir):
    """A study process killed (SIGKILL, inside a trial) resumes: the cut trial is failed, the budget refilled."""
    r = study_recipe(tiny_bert_dir, reviews_dir, trials=3, pruner={"name": "none"}, sampler="random")
    path = write(tmp_path / "r.yaml", r)
    out = tmp_path / "study"
    # The loop's fault injection kills the process at step 3 of the first trial that reaches it.
    p = subprocess.run(_cli(path, "--out", out), env=_env(TRAINOPT_FAULT_KILL_AT_STEP="3"), capture_output=True,
                       timeout=300)
    assert p.returncode == -signal.SIGKILL
    assert main(["tune", str(path), "--out", str(out), "--resume"]) == 0
    s = json.loads((out / "study.json").read_text())
    assert s["counts"] == {"complete": 3, "pruned": 0, "fail": 1, "running": 0}
    assert s["trials"][0]["state"] == "fail" and "interrupted" in s["trials"][0]["error"]
    # the resumed sampler goes on with new values instead of drawing the first process's sequence again
    lrs = [t["params"]["stages.finetune.optimizer.lr"] for t in s["trials"]]
    assert len(set(lrs)) == len(lrs), lrs


def test_a_trial_killed_after_its_report_was_written_is_kept_on_resume(tmp_path, tiny_bert_dir, reviews_dir):
    """The study process dies between a trial's run writing report.json and the study being told: on --resume the
    trial is scored from its report and kept as complete (it used to be failed and its budget run again)."""
    import optuna

    r = study_recipe(tiny_bert_dir, reviews_dir, trials=1, pruner={"name": "none"}, sampler="random")
    out = tmp_path / "study"
    first = tune(r, out=out)
    (done,) = first["trials"]
    # one more trial as a killed process leaves it: RUNNING in the study, its finished run directory on disk
    study = optuna.load_study(study_name=r["name"], storage=f"sqlite:///{(out / 'study.db').resolve()}")
    lr = optuna.distributions.FloatDistribution(1e-5, 3e-2, log=True)
    cut = study.ask({"stages.finetune.optimizer.lr": lr})
    import shutil

    shutil.copytree(Path(done["run_dir"]), out / "trials" / "0001")
    cut.set_user_attr("run_dir", str((out / "trials" / "0001").resolve()))
    del study
    s = tune(r, out=out, resume=True)
    assert s["counts"] == {"complete": 2, "pruned": 0, "fail": 0, "running": 0}
    kept = next(t for t in s["trials"] if t["number"] == 1)
    assert kept["state"] == "complete" and kept["values"] == done["values"] and kept["steps"] == done["steps"]


# ------------------------------------------------------------------------------------------------ postgres
def _wait_for(pred, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _study(url: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=url)


@pytest.mark.postgres
def test_two_workers_share_a_postgres_study(tmp_path, tiny_bert_dir, reviews_dir, postgres_server):
    """Two worker processes (as on two machines, each with its own run directory) on one PostgreSQL study:
    exactly the budget of trials, each run once by one worker, none lost or duplicated."""
    url = postgres_server("share")
    r = study_recipe(tiny_bert_dir, reviews_dir, trials=6, sampler="random", pruner={"name": "none"})
    path = write(tmp_path / "r.yaml", r)
    procs = [subprocess.Popen(_cli(path, "--out", tmp_path / f"w{k}", "--storage", url, "--study-name", "share"),
                              env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for k in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
    trials = [t for t in _study(url, "share").trials if not str(t.user_attrs.get("error", "")).startswith("Budget")]
    finished = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(finished) == 6 and sorted({t.number for t in finished}) == sorted(t.number for t in finished)
    dirs = {Path(t.user_attrs["run_dir"]) for t in finished}
    assert len(dirs) == 6 and all((d / "report.json").is_file() for d in dirs)
    assert {d.parent.parent.name for d in dirs} == {"w0", "w1"}  # both workers ran trials
    for k in range(2):  # each worker's summary covers the whole study
        assert json.loads((tmp_path / f"w{k}" / "study.json").read_text())["counts"]["complete"] == 6


@pytest.mark.postgres
def test_killed_worker_leaves_the_study_usable(tmp_path, tiny_bert_dir, reviews_dir, postgres_server):
    url = postgres_server("kill")
    r = study_recipe(tiny_bert_dir, reviews_dir, trials=3, sampler="random", pruner={"name": "none"}, heartbeat_s=1)
    r["stages"][0]["epochs"] = 6  # trials long enough to be killed inside one
    path = write(tmp_path / "r.yaml", r)
    a = subprocess.Popen(_cli(path, "--out", tmp_path / "a", "--storage", url, "--study-name", "kill"), env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (tmp_path / "a" / "trials" / "0000" / "metrics.jsonl").is_file(), 120, "trial 0 to train")
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()
    assert _study(url, "kill").trials[0].state.name == "RUNNING"  # left behind by the dead worker
    b = subprocess.run(_cli(path, "--out", tmp_path / "b", "--storage", url, "--study-name", "kill"), env=_env(),
                       capture_output=True, timeout=600)
    assert b.returncode == 0, b.stderr.decode()[-2000:]
    states = [t.state.name for t in _study(url, "kill").trials]
    assert states[0] == "FAIL" and states.count("COMPLETE") == 3 and "RUNNING" not in states


@pytest.mark.distributed
def test_trials_under_ddp_rank0_talks_to_the_study_and_ranks_prune_together(tmp_path, tiny_bert_dir, reviews_dir):
    """Each trial on 2 gloo processes: the known-good enqueued trial completes; the second (lr 1e-9) is pruned at its
    first evaluation — decided by rank 0 with the study, obeyed by both ranks (the run stops cleanly)."""
    r = study_recipe(tiny_bert_dir, reviews_dir, trials=2, sampler="random",
                     objectives=[{"metric": "loss"}],
                     pruner={"name": "median", "startup_trials": 1, "warmup_evals": 0},
                     enqueue=[{"stages.finetune.optimizer.lr": 3e-3}, {"stages.finetune.optimizer.lr": 1e-9}])
    r["stages"][0]["max_grad_norm"] = None
    path = write(tmp_path / "r.yaml", r)
    assert main(["tune", str(path), "--out", str(tmp_path / "s"), "--nproc", "2"]) == 0
    s = json.loads((tmp_path / "s" / "study.json").read_text())
    t0, t1 = s["trials"]
    assert t0["params"]["stages.finetune.optimizer.lr"] == 3e-3 and t0["state"] == "complete"
    assert json.loads((Path(t0["run_dir"]) / "report.json").read_text())["stages"][0]["training"]["world_size"] == 2
    assert t1["state"] == "pruned" and t1["pruned_at_eval"] == 1 and t1["steps"] == 5
    assert not (Path(t1["run_dir"]) / "report.json").exists()


def test_enqueue_keys_must_be_searched(tiny_bert_dir, reviews_dir):
    r = study_recipe(tiny_bert_dir, reviews_dir, enqueue=[{"stages.finetune.batch_size": 8}])
    with pytest.raises(RecipeError) as e:
        load_study_recipe(r, [])
    assert "not a key of search.space" in str(e.value)


def test_patience_keeps_an_improving_trial_that_the_median_pruner_would_stop():
    import optuna

    from trainopt.recipe import SearchSpec
    from trainopt.tune.storage import make_pruner

    space = {"stages.finetune.optimizer.lr": {"type": "float", "low": 1e-5, "high": 1e-3}}

    def should_prune(pruner_spec, values):
        search = SearchSpec(space=space, pruner=pruner_spec, trials=5)
        study = optuna.create_study(direction="maximize", pruner=make_pruner(search))
        for _ in range(3):  # earlier trials: 0.80 at every evaluation
            t = study.ask()
            for step in range(1, 5):
                t.report(0.80, step)
            study.tell(t, 0.80)
        trial = study.ask()
        for step, v in enumerate(values, 1):
            trial.report(v, step)
        return trial.should_prune()

    median = {"name": "median", "startup_trials": 3, "warmup_evals": 0}
    # all below the median (0.80) at evaluation 4; Optuna's PatientPruner lets the median pruner act only once the
    # best of the last patience + 1 evaluations has fallen below the best before them by more than min_delta
    rising, flat, falling = [0.60, 0.65, 0.70, 0.72], [0.60] * 4, [0.62, 0.60, 0.60, 0.60]
    assert all(should_prune(median, v) for v in (rising, flat, falling))
    assert not should_prune({**median, "patience": 2}, rising)  # still improving: kept
    assert not should_prune({**median, "patience": 2}, flat)  # not worse: kept
    assert should_prune({**median, "patience": 2}, falling)  # worse than before: the median pruner decides
    assert not should_prune({**median, "patience": 2, "min_delta": 0.05}, falling)  # within the tolerance
    assert should_prune({"name": "none", "patience": 2}, falling)  # patience alone: early stopping per trial
    assert not should_prune({"name": "none"}, falling)
    # the training loop's hook reports to the study whenever some pruning is on (patience alone included)
    from trainopt.tune.trial import make_pruning_hook

    for spec, reported in (({"name": "none"}, {}), ({"name": "none", "patience": 2}, {1: 0.7})):
        study = optuna.create_study(direction="maximize")
        on_eval, _ = make_pruning_hook(study.ask(), SearchSpec(space=space, pruner=spec, trials=5))
        on_eval("finetune", 10, {"accuracy": 0.7})
        assert study.trials[0].intermediate_values == reported
    with pytest.raises(ValueError, match="single-objective"):
        SearchSpec(space=space, pruner={"name": "none", "patience": 2}, trials=5,
                   objectives=[{"metric": "accuracy"}, {"metric": "disk_bytes"}])
