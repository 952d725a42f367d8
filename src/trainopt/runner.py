"""`trainopt run`: validate the recipe, prepare data and model, run the stages, measure each, write the report.

Run directory layout:
  .trainopt-run          marks the folder as trainopt's (only such a folder is resumed or deleted by --overwrite)
  .trainopt.lock         locked by the process writing the run (a second run into the folder is refused)
  recipe.yaml            the fully resolved recipe
  data.json              data statistics (rows, cleaning counts, labels, tokens)
  stages/<name>/model/   the stage's model (save_pretrained folder, safetensors, tokenizer, label map)
  stages/<name>/stage.json  the stage's report entry (written last: its presence marks the stage done)
  metrics.jsonl, tensorboard/   training curves
  report.json, report.md        the side-by-side report
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path

import torch

from . import budget, measure
from .artifacts import count_params, load_model, load_saved, save_model
from .classical import classical_baseline, versus
from .compare import classify_effect, compare, lost_sparsity, vs_baseline
from .context import Hooks, RunContext
from .data.dedup import describe as describe_data
from .data.prepare import tokenize
from .errors import RecipeError
from .evaluate import evaluate, generate_samples
from .models import disk_bytes, folder_problem, load_tokenizer, resolve_model_ref
from .recipe import Recipe, dump_recipe
from .results import AugmentResult, Outcome, Size, Speed, StageResult
from .rundir import RunLock, claim, is_trainopt_run
from .report import print_summary, write_report
from .techniques import stage_module
from .train import distributed
from .version import __version__
from .timing import time_models
from .train.faults import Faults
from .train.setup import set_determinism
from .train.monitor import MetricsLog, NullLog, console
from .validate import check_compat, validate  # noqa: F401 — re-exported: `trainopt.runner.validate` is public


def prepare_run_dir(recipe: Recipe, out: str | Path | None, resume: bool, overwrite: bool) -> tuple[Path, RunLock]:
    """The run directory, claimed and locked for this process (rundir.py: --overwrite deletes only a directory
    trainopt created and that holds none of the run's inputs; --resume continues only a trainopt run)."""
    run_dir = Path(out) if out else Path("runs") / recipe.name
    recipe_file = run_dir / "recipe.yaml"
    if resume and is_trainopt_run(run_dir) and recipe_file.is_file() and \
            recipe_file.read_text() != dump_recipe(recipe):
        raise RecipeError("", f"the recipe differs from the one {run_dir} was started with",
                          "resume with the same recipe and --set values, or pass --overwrite to start over")
    inputs = {"data.source": recipe.data.source, "data.validation_source": recipe.data.validation_source,
              "data.test_source": recipe.data.test_source, "model.path": recipe.model.path,
              "model.tokenizer": recipe.model.tokenizer}
    return run_dir, claim(run_dir, resume, overwrite, inputs)


def run(recipe=None, out: str | Path | None = None, overrides: list[str] | None = None, resume: bool = False,
        overwrite: bool = False, on_eval=None, show_summary: bool = True, faults: Faults | None = None) -> dict:
    """Run a recipe (a path, a built-in name, a dict or a Recipe) and return the report as a dict.

    `on_eval(stage_name, step, quality)` is called after every validation evaluation inside training (a tuning
    study reports to its pruner there). `faults` injects kills, NaNs or spikes (the resume and recovery tests);
    with none given, the TRAINOPT_FAULT_* variables are read here, once per run, so that a test can kill a real
    `trainopt` process or torchrun worker."""
    t_start = time.perf_counter()
    recipe, device, texts = validate(recipe, overrides)
    dd, rank_device = distributed.from_env(recipe.run.device)  # under torchrun: this process's rank and device
    device = rank_device or device
    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
    console.quiet = not dd.is_main  # one voice: rank 0 prints, logs and writes the run directory
    lock = None
    if dd.is_main:
        run_dir, lock = prepare_run_dir(recipe, out, resume, overwrite)
    else:
        run_dir = Path(out) if out else Path("runs") / recipe.name
    try:
        distributed.barrier(dd)
        return _execute(recipe, device, texts, dd, run_dir, resume, on_eval, show_summary, faults, t_start)
    finally:
        if lock is not None:
            lock.release()


def _execute(recipe: Recipe, device, texts, dd, run_dir: Path, resume: bool, on_eval, show_summary: bool,
             faults: Faults | None, t_start: float) -> dict:
    """The run itself, in a claimed run directory: data, the stages in order, the report."""
    set_determinism(recipe.run.seed, recipe.run.deterministic)
    saved_tokenizer = run_dir / "tokenizer"
    if (resume or not dd.is_main) and saved_tokenizer.is_dir():  # a trained tokenizer must not change between a
        from transformers import AutoTokenizer                    # run and its resume, nor between ranks

        tokenizer = AutoTokenizer.from_pretrained(str(saved_tokenizer))
    else:
        tokenizer = load_tokenizer(recipe, [m["content"] for c in texts.train for m in c] if texts.sft else texts.train)
    data = tokenize(texts, tokenizer, recipe)
    console.print(f"data: {describe_data(data.stats)}")
    if dd.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
        _write_text(run_dir / "data.json", json.dumps(data.stats, indent=1))
        if not saved_tokenizer.is_dir():
            tmp = run_dir / "tokenizer.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tokenizer.save_pretrained(str(tmp))
            os.replace(tmp, saved_tokenizer)
    log = MetricsLog(run_dir, recipe.run.tensorboard) if dd.is_main else NullLog()
    hardware = measure.hardware_info(device)
    eval_split = data.test if data.test is not None else (data.validation or data.train)
    inputs = measure.fixed_inputs(eval_split, recipe.task, recipe.measure.batch_sizes, recipe.measure.seq_len) \
        if recipe.measure.latency else None
    prompt = eval_split.blocks[:1, : min(32, eval_split.blocks.shape[1])] if recipe.task == "causal_lm" else None
    samples = None
    if texts.sft and recipe.measure.samples:
        from .data.sft import sample_prompts

        samples = sample_prompts(texts.test or texts.validation or texts.train, tokenizer, recipe.data.sft.template,
                                 recipe.measure.samples)
    ctx = RunContext(recipe=recipe, run_dir=run_dir, device=device, tokenizer=tokenizer, data=data, log=log,
                     resume=resume, dist=dd, hooks=Hooks(on_eval=on_eval, faults=faults or Faults.from_env()),
                     measure_inputs=inputs, prompt=prompt, samples=samples)
    meta = {"task": recipe.task, "labels": data.label_names, "max_length": recipe.data.max_length,
            "block_size": recipe.data.block_size, "clean": recipe.data.clean.model_dump(),
            "trainopt_version": __version__}
    if texts.sft:  # `trainopt predict` wraps a prompt the way the model was fine-tuned
        meta["sft"] = {"template": data.stats["template"], "system": recipe.data.sft.system}

    model, stop = None, None
    results: list[StageResult] = []
    data_entries: list[AugmentResult] = []  # stages that change the training data (augment), not the model
    try:
        for index, stage in enumerate(recipe.stages):
            stage_dir = run_dir / "stages" / stage.name
            done = stage_dir / "stage.json"
            module = stage_module(stage.kind)
            # each stage starts from its own seed (the run's, offset by its place in the chain), not from whatever
            # random state the stages before it left in this process: a chain resumed after a kill anywhere (a
            # training stage's checkpoint restores its own state) draws what the uninterrupted chain drew
            set_determinism(recipe.run.seed + 1000 * index, recipe.run.deterministic)
            if getattr(module, "CHANGES", "model") == "data":  # augment: rebuilt on resume too (its cache makes that
                console.rule(f"[bold]{stage.name}[/bold] ({stage.kind})")  # cheap and exact)
                if not dd.is_main:  # the other ranks read rank 0's cache
                    distributed.barrier(dd)
                texts, entry = module.run(texts, stage, ctx, stage_dir)
                if dd.is_main:
                    distributed.barrier(dd)
                    _write_text(done, json.dumps(entry.to_json(), indent=1))
                data = tokenize(texts, tokenizer, recipe)
                ctx.data = data
                data_entries.append(entry)
                console.print(f"augmented the training split: {entry.originals} → {entry.train_rows} examples "
                              f"({entry.per_operation})")
                continue
            finished = _finished(done, run_dir) if resume and done.is_file() else None
            if finished is not None:
                results.append(finished)
                model = None  # reload lazily from the finished stage's folder
                console.print(f"[green]stage {stage.name} already done[/green]: skipped")
                if (stop := _over_budget_stop(finished)) is not None:
                    break
                continue
            before = _parent(stage, results)
            if stage.from_stage is not None:
                model, _, _ = load_saved(run_dir / before.checkpoint, recipe.task)
            elif model is None:
                model = _model_for(recipe, tokenizer, data, results, run_dir)
            ctx.parent_dir = run_dir / before.checkpoint if before is not None else \
                (resolve_model_ref(recipe.model.path) if recipe.model.path else None)
            first_attempt = not stage_dir.exists()  # (the kill-safety tests kill a stage on its first attempt)
            stage_dir.mkdir(parents=True, exist_ok=True)
            console.rule(f"[bold]{stage.name}[/bold] ({stage.kind})")
            parent = copy.deepcopy(model) if _may_search(stage, recipe, dd, results) else None
            model, outcome = module.run(model, data, stage, ctx, stage_dir)
            ctx.hooks.faults.kill_in_chain(stage.name, "ran", first_attempt)
            searched = None
            if parent is not None:  # over budget with on_over_budget: search: the fastest weaker setting that fits
                searched = _budget_search(model, parent, outcome, data, stage, ctx, stage_dir, module, results)
                del parent
                if searched is not None:
                    model, outcome, stage = searched.model, searched.outcome, searched.stage
            result = None
            if dd.is_main:  # evaluated, measured and saved once; every rank gets the result
                result = _measure_stage(model, data, stage, outcome, ctx, inputs, stage_dir, meta, results)
                if searched is not None:
                    result.details.setdefault("budget", {})["search"] = searched.entry
                ctx.hooks.faults.kill_in_chain(stage.name, "measured", first_attempt)
                _write_text(done, json.dumps(result.to_json(), indent=1))
                shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)  # the model folder is the artifact
                (stage_dir / "best.safetensors").unlink(missing_ok=True)
            results.append(distributed.broadcast_object(dd, result))
            stop = _over_budget_stop(results[-1])
            if stop is not None:
                break
    finally:
        log.close()

    # the classical row, once the chain has run (a model that fails to load costs no baseline fit first)
    classical = _classical(texts, data, recipe, run_dir) if dd.is_main and recipe.measure.classical else None
    stages = [r.to_json() for r in results]
    for entry in stages:
        if (vs := versus(entry["quality"], classical, recipe.task)) is not None:
            entry["vs_classical"] = vs
    report = {"trainopt_version": __version__, "recipe": recipe.model_dump(mode="json"), "hardware": hardware,
              "data": data.stats, "stages": stages, "classical": classical,
              "augmentation": [e.to_json() for e in data_entries],
              "run_dir": str(run_dir),
              "total_wall_s": round(time.perf_counter() - t_start, 2)}
    if dd.is_main:
        write_report(run_dir, report)
        if show_summary:
            print_summary(report)
    distributed.barrier(dd)
    console.quiet = False
    if stop is not None:
        raise stop
    return report


def _may_search(stage, recipe: Recipe, dd, results: list[StageResult]) -> bool:
    """Whether this stage may need a budget search (its input model is then kept aside for the trials)."""
    spec = budget.spec_for(stage, recipe)
    return (spec is not None and spec.on_over_budget == "search" and hasattr(stage, "weaker") and not dd.enabled
            and any(r.effect == "baseline" for r in results))


def _budget_search(model, parent, outcome, data, stage, ctx: RunContext, stage_dir: Path, module,
                   results: list[StageResult]):
    """Score the stage as written on the validation split; over budget, search weaker settings (budget_search.py)
    and write the chosen ones into recipe.chosen.yaml. None where the stage fits (or cannot be searched)."""
    from . import budget_search

    recipe = ctx.recipe
    spec = budget.spec_for(stage, recipe)
    base = next(r for r in results if r.effect == "baseline")
    metric = budget.metric_for(spec, recipe.task, getattr(data.train, "labels", None))
    reference = (base.validation_quality or {}).get(metric)
    if outcome.effect == "unchanged" or reference is None or data.validation is None:
        return None
    device = torch.device(outcome.measure_device or ctx.device.type)
    model.eval()
    value = evaluate(model, data.validation, recipe.task, _eval_batch(recipe.task), device)[metric]
    if budget.drop_of(metric, reference, value) <= spec.max_drop + 1e-9:
        return None
    console.print(f"[bold red]{stage.name} is over its quality budget[/bold red] (validation {metric} {value} against "
                  f"{reference}): searching weaker settings, {spec.trials} trials")
    lat, steady = budget_search.latency_ms(model, ctx.measure_inputs, device)
    first = {"params": "as written", "value": value, "latency_ms": lat, "latency_reliable": steady,
             "weight_bytes": budget_search.weight_bytes(model)}
    searched = budget_search.search(parent, data, stage, ctx, stage_dir, module, spec, reference, metric, first)
    if searched is not None:
        stages = [searched.stage if s.name == stage.name else s for s in _chosen(ctx.run_dir, recipe).stages]
        chosen = recipe.model_copy(update={"stages": stages})
        _write_text(ctx.run_dir / "recipe.chosen.yaml", "# the run's recipe with the settings its budget search chose "
                    "(trainopt run this file to repeat the chain without searching)\n" + dump_recipe(chosen))
    return searched


def _chosen(run_dir: Path, recipe: Recipe) -> Recipe:
    """The recipe with every earlier search's choice (recipe.chosen.yaml), or the run's own."""
    from .recipe import load_recipe

    path = run_dir / "recipe.chosen.yaml"
    return load_recipe(path) if path.is_file() else recipe


def _over_budget_stop(result: StageResult) -> budget.OverBudget | None:
    """The error that stops the chain after a stage over a `fail` budget (its result and the report are written)."""
    b = result.details.get("budget") or {}
    if b.get("over") and b.get("on_over_budget") == "fail":
        return budget.OverBudget(f"stage {result.name} lost more than its quality budget allows (validation "
                                 f"{b['metric']} {b['value']} against {b['reference']} of {b['reference_stage']}, "
                                 f"max drop {b['max_drop']}): the chain stopped after it — loosen budget.max_drop, "
                                 "weaken the stage, or set budget.on_over_budget: warn")
    return None


def _classical(texts, data, recipe, run_dir: Path) -> dict | None:
    """The classical baseline row (classical.py), computed once per run directory and read back on --resume."""
    saved = run_dir / "classical.json"
    if saved.is_file():
        try:
            return json.loads(saved.read_text(encoding="utf-8"))
        except ValueError:
            pass
    entry = classical_baseline(texts, data, recipe)
    if entry is not None:
        q = entry["quality"]
        console.print(f"classical baseline ({entry['name']}): " + (
            f"accuracy {q['accuracy']}, macro-F1 {q['f1_macro']}" if recipe.task == "classification"
            else f"perplexity {q['perplexity']}") + f", {entry['cost']['wall_s']} s")
        _write_text(saved, json.dumps(entry, indent=1))
    return entry


def _finished(done: Path, run_dir: Path) -> StageResult | None:
    """A finished stage read back on --resume; None (run it again, said on the terminal) where its stage.json or its
    model folder was damaged after it finished (a truncated copy, a disk error)."""
    try:
        result = StageResult.from_json(json.loads(done.read_text(encoding="utf-8")))
        problem = folder_problem(run_dir / result.checkpoint)
    except (OSError, ValueError, KeyError, TypeError) as e:
        problem = f"{done} is unreadable ({type(e).__name__})"
    if problem is None:
        return result
    console.print(f"[yellow]{problem}: running the stage again[/yellow]")
    return None


def _model_for(recipe, tokenizer, data, results: list[StageResult], run_dir):
    results = _chain(results)
    if results:  # continue from the last finished stage's saved model
        model, _, _ = load_saved(run_dir / results[-1].checkpoint, recipe.task)
        return model
    return load_model(recipe, tokenizer, data.label_names)


def _measure_stage(model, data, stage, outcome: Outcome, ctx: RunContext, inputs, stage_dir: Path, meta: dict,
                   previous: list[StageResult]) -> StageResult:
    """Save, evaluate and time a stage's model; label its effect and compare it with its parent and the baseline."""
    recipe = ctx.recipe
    device = torch.device(outcome.measure_device or ctx.device.type)
    model.eval()
    if outcome.folder is not None:  # an export: its own folder, measured in its own runtime
        model_dir, (params, nonzero), model = outcome.folder, outcome.params, outcome.runtime
    else:
        model_dir = save_model(model, ctx.tokenizer, stage_dir / "model", {**meta, **outcome.saved_meta})
        params, nonzero = count_params(model)
    t0 = time.perf_counter()
    quality: dict = {"accuracy": None, "f1_macro": None, "loss": None, "perplexity": None}
    if data.test is not None:
        console.print(f"{stage.name}: test evaluation ({len(data.test):,} {_unit(recipe.task)}) on {device.type}")
        quality = evaluate(model, data.test, recipe.task, _eval_batch(recipe.task), device)  # fp32: as plain HF loads it
        if recipe.task == "classification":
            names = data.label_names
            quality["per_class"] = {names[int(c)]: v for c, v in quality["per_class"].items()}
            quality["labels"] = names
    validation = None
    if (recipe.measure.validation or budget.any_budget(recipe)) and data.validation is not None:
        vq = evaluate(model, data.validation, recipe.task, _eval_batch(recipe.task), device)
        validation = {k: v for k, v in vq.items() if k in ("accuracy", "f1_macro", "loss", "perplexity")}
    m = recipe.measure
    parent = _parent(stage, previous)
    baseline = next((r for r in previous if r.effect == "baseline"), None)
    timing, notes = None, []
    if inputs is not None:
        refs = _references([r for r in (parent, baseline) if r is not None] if m.interleave else [], device, ctx,
                           notes)
        console.print(f"{stage.name}: timing at batch {', '.join(map(str, sorted(inputs)))}"
                      + (f", interleaved with {', '.join(refs)}" if refs else "") + f" on {device.type}")
        timing = time_models({stage.name: model, **refs}, inputs, device, m.warmup, m.repeats, m.max_seconds)
        del refs
        notes += [_untimed(name, device, why) for name, why in timing.dropped.items()]
        speed = timing.speed(stage.name, device)
        if recipe.task == "causal_lm" and m.generate_tokens and hasattr(model, "generate"):
            speed.generation = measure.measure_generation(model, ctx.prompt, m.generate_tokens, device,
                                                          min(m.repeats, 5), m.max_seconds)
        if not speed.reliable:
            console.print(f"[yellow]speed figures of {stage.name} are unreliable[/yellow]: "
                          + "; ".join(speed.timing["warnings"]))
    else:
        speed = Speed.unmeasured(m.batch_sizes)
    details = dict(outcome.details)
    if ctx.samples and hasattr(model, "generate"):
        details["samples"] = generate_samples(model, ctx.tokenizer, ctx.samples, device)
    cost = {**outcome.cost, "eval_wall_s": round(time.perf_counter() - t0, 2)}
    result = StageResult(name=stage.name, kind=stage.kind, effect=outcome.effect, quality=quality,
                         size=Size(params, nonzero, disk_bytes(model_dir)), speed=speed, cost=cost,
                         checkpoint=os.path.relpath(model_dir, ctx.run_dir), validation_quality=validation,
                         details=details)
    result.effect = "baseline" if not previous else classify_effect(result, parent, outcome, timing, notes)
    if (lost := lost_sparsity(result, parent)) is not None:
        notes.append(lost)
    if parent is not None:
        result.vs_parent = {"stage": parent.name, **compare(result, parent, recipe.task, timing)}
    result.vs_baseline = vs_baseline(result, previous, recipe.task, timing)
    entry = budget.judge(result, stage, outcome, previous, recipe, getattr(data.train, "labels", None))
    if entry and entry["over"]:
        console.print(f"[bold red]{stage.name} is over its quality budget[/bold red]: validation {entry['metric']} "
                      f"{entry['value']} against {entry['reference']} of {entry['reference_stage']} "
                      f"(max drop {entry['max_drop']})")
    if notes:
        details["notes"] = list(details.get("notes", [])) + notes
        for note in notes:
            console.print(f"[yellow]{stage.name}[/yellow]: {note}")
    return result


def _parent(stage, previous: list[StageResult]) -> StageResult | None:
    """The finished stage a stage starts from: its from_stage, else the one before it (None: the recipe's model)."""
    if stage.from_stage:
        return next(r for r in previous if r.name == stage.from_stage)
    chain = _chain(previous)
    return chain[-1] if chain else None


def _chain(results: list[StageResult]) -> list[StageResult]:
    """The stages a later stage can start from: all but exports (an export writes a copy in another runtime's
    format; the chain goes on from the model it exported)."""
    return [r for r in results if r.kind != "export"]


def _eval_batch(task: str) -> int:
    """Rows per evaluation batch: LM rows 8 at a time (64 rows of 256 tokens of a 49k vocabulary are 3 GB of logits)."""
    return 64 if task == "classification" else 8


def _unit(task: str) -> str:
    return "examples" if task == "classification" else "blocks"


def _references(stages: list[StageResult], device, ctx: RunContext, notes: list[str]) -> dict:
    """The finished stages a new stage is compared with, loaded from their saved folders onto the device the new
    stage is timed on, to be timed interleaved with it (timing.py). One that cannot be loaded there is compared by
    its own figures, with a note."""
    refs = {}
    for r in stages:
        if r.name in refs:
            continue
        try:
            ref, _, _ = load_saved(ctx.run_dir / r.checkpoint, ctx.recipe.task)
            refs[r.name] = ref.to(device)
        except (RuntimeError, NotImplementedError, TypeError) as e:
            notes.append(_untimed(r.name, device, str(e).splitlines()[0][:120]))
    return refs


def _untimed(name: str, device, why: str) -> str:
    return f"{name} could not be timed again on {device.type} ({why}): compared with its own figures, timed separately"


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
