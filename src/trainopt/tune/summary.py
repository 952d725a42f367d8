"""The study's results: every trial, the best / Pareto trials, parameter importances, compute used; study.json,
study.md, study.html, best recipes and the Pareto plot."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from ..recipe import SearchSpec, dump_recipe, \
    parse_recipe
from ..train.monitor import console
from .storage import optuna_module




def fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


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
    optuna = optuna_module()
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
                *[fmt(t["params"].get(p)) if p in t["params"] else "—" for p in params]]

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

    from ..report.html import page, table

    objs, params = summary["objectives"], summary["space"]
    head = ["trial", "state", *[o["metric"] for o in objs], "steps", *[p.split(".")[-1] for p in params], "error"]

    def row(t):
        vals = t["values"] or [None] * len(objs)
        return [str(t["number"]), t["state"], *["—" if v is None else f"{v:.4g}" for v in vals],
                str(t["steps"] if t["steps"] is not None else "—"),
                *[fmt(t["params"][p]) if p in t["params"] else "—" for p in params], (t["error"] or "")[:120]]

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
                      *[fmt(t["params"].get(p)) for p in summary["space"]])
    console.print(table)
