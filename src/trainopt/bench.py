"""`trainopt bench` and `trainopt env`: what each acceleration technique buys on this hardware.

bench takes a recipe's first training stage and trains it for a fixed number of steps in several variants: a plain
baseline (fp32, eager attention, no compile, no activation checkpointing, unfused AdamW), each technique alone on
top of it, and the full stack. Every variant starts from the same weights, seed and batches, so the loss after N
steps shows whether the numerics moved. Reported per variant: steady-state tokens/s (median over the steps after
the warm-up), its ratio to the baseline, MFU, peak memory, the loss after N steps and the first step's time (for
compile: compile time + one step). Written to <out>/bench.json and bench.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import statistics
import time
from pathlib import Path

import torch

from . import measure
from .errors import RecipeError
from .train.monitor import console

VARIANTS = {  # name → TrainSettings overrides on top of the plain baseline
    "baseline": {},
    "bf16": {"precision": "bf16"},
    "fp16": {"precision": "fp16"},
    "sdpa": {"attention": "sdpa"},
    # causal LMs: SDPA told is_causal instead of handed the mask transformers materialises under compile (torch < 2.14)
    "sdpa_causal": {"attention": "sdpa_causal"},
    "fa4": {"attention": "fa4", "precision": "bf16"},  # FlashAttention-4 (Hopper/Blackwell; bf16 only, so with it)
    "fused_adamw": {"optimizer.fused": True},
    "compile": {"compile": True},
    "activation_checkpointing": {"activation_checkpointing": True},
    "async_steps": {"optimizer.fused": True, "recovery.enabled": False},
    "chunked_ce": {"lm_loss": "chunked"},
    "chunked_ce_vocab64": {"lm_loss": "chunked", "lm_loss_vocab_multiple": 64},  # aligned head matmuls
    "liger_ce": {"lm_loss": "liger"},
    "fp8": {"fp8": "tensorwise"},  # torchao's fp8 matmuls (CUDA 8.9+); the loss column shows what they cost
    # CUDA graphs need one shape per graph: a static compile, and (classification) every batch padded to the
    # truncation length. Pays off where the host, not the GPU, sets the pace (short sequences, small models).
    "cuda_graphs": {"compile": True, "compile_mode": "reduce-overhead", "compile_dynamic": "static",
                    "data.bucket": False, "data.pad_to_multiple_of": "max_length"},
}
DATA_KEYS = ("data.bucket", "data.pad_to_multiple_of")  # variant keys that set the batching, not the stage
PLAIN = {"precision": "fp32", "attention": "eager", "compile": False, "activation_checkpointing": False,
         "optimizer.fused": False, "lm_loss": "full", "recovery.enabled": True}


def available(device: torch.device, task: str = "classification") -> list[str]:
    """The variants that make sense on this device and task (fp16 needs CUDA's GradScaler; bf16 needs native
    support; the fused LM losses need a causal LM, Liger a CUDA device and the liger-kernel package)."""
    from .train.setup import resolve_precision

    names = ["baseline"]
    if resolve_precision("auto", device) == "bf16":
        names.append("bf16")
    if device.type == "cuda":
        names.append("fp16")
    names += ["sdpa", "fused_adamw", "async_steps", "compile", "activation_checkpointing"]
    if device.type == "cuda":
        names.append("cuda_graphs")
        from .train.fp8 import why_unsupported

        if why_unsupported(device) is None:
            names.append("fp8")
    if task == "causal_lm":
        names += ["sdpa_causal", "chunked_ce", "chunked_ce_vocab64"]
        from .train.fa4 import why_unavailable

        if why_unavailable(device) is None:
            names.append("fa4")
        if device.type == "cuda" and importlib.util.find_spec("liger_kernel") is not None:
            names.append("liger_ce")
    return names


def full_stack(names: list[str]) -> dict:
    """Every speed technique together (not fp16, an alternative to bf16; not activation checkpointing, which trades
    speed for memory; CUDA graphs, which change the batches' padding; fp8, which changes the numerics — each measured
    on its own; of the fused LM losses, Liger's where present, else the chunked one). It includes async_steps, which
    turns instability recovery off (non-finite steps are still skipped)."""
    stack = {}
    alone = ("baseline", "fp16", "activation_checkpointing", "cuda_graphs", "fp8")
    for n in names:
        if n in alone or (n in ("chunked_ce", "chunked_ce_vocab64") and "liger_ce" in names):
            continue
        if (n in ("sdpa", "sdpa_causal") and "fa4" in names) or (n == "sdpa" and "sdpa_causal" in names):
            continue  # one attention kernel in the stack: FA4 where it runs, else SDPA without a mask tensor
        stack.update(VARIANTS[n])
    return stack


def _settings(stage, overrides: dict):
    from .recipe import set_path

    raw = stage.model_dump()
    for key, value in {**PLAIN, **overrides}.items():
        set_path(raw, key, value)
    return type(stage).model_validate(raw)


def bench(recipe=None, overrides: list[str] | None = None, steps: int = 20, warmup: int = 3,
          only: list[str] | None = None, out: str | Path | None = None) -> dict:
    from .data.prepare import tokenize
    from .models import load_tokenizer
    from .runner import validate

    recipe, device, texts = validate(recipe, overrides)
    stage = next((s for s in recipe.stages if s.kind == "train"), None)
    if stage is None:
        raise RecipeError("stages", "bench needs a train stage", "add a kind: train stage (or use another recipe)")
    if steps <= warmup:
        raise RecipeError("--steps", f"{steps} steps leave nothing after {warmup} warm-up steps", "use more steps")
    names = available(device, recipe.task)
    if only:
        unknown = [n for n in only if n not in VARIANTS and n != "full"]
        if unknown:
            raise RecipeError("--only", f"unknown technique {unknown[0]}", f"use some of {list(VARIANTS)} or full")
        absent = [n for n in only if n in VARIANTS and n not in names]
        if absent:
            raise RecipeError("--only", f"{absent[0]} does not apply here", f"use some of {names} or full")
        names = ["baseline"] + [n for n in only if n != "baseline" and n != "full"]
    plan = [(n, VARIANTS[n]) for n in names]
    if not only or "full" in only:
        plan.append(("full", full_stack(names)))
    out = Path(out) if out else Path("runs") / f"bench-{recipe.name}"
    out.mkdir(parents=True, exist_ok=True)
    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
    tokenizer = load_tokenizer(recipe, texts.train)
    data = tokenize(texts, tokenizer, recipe)
    rows = [run_variant(recipe, stage, data, tokenizer, device, name, over, steps, warmup, out / name)
            for name, over in plan]
    base = rows[0]
    for r in rows:
        if r.get("tokens_per_s") and base.get("tokens_per_s"):
            r["speedup"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
            r["loss_delta"] = round(r["loss_after"] - base["loss_after"], 5)
        if r.get("first_step_s") is not None and base.get("first_step_s") is not None and r["variant"] in (
                "compile", "full"):
            r["compile_s_est"] = round(r["first_step_s"] - base["first_step_s"], 2)
    result = {"recipe": recipe.name, "stage": stage.name, "steps": steps, "warmup_steps": warmup,
              "hardware": measure.hardware_info(device), "batch_size": stage.batch_size,
              "grad_accum": stage.grad_accum, "variants": rows}
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    (out / "bench.md").write_text(to_markdown(result))
    print_table(result)
    return result


def run_variant(recipe, stage, data, tokenizer, device, name: str, over: dict, steps: int, warmup: int,
                run_dir: Path, log_every: int = 1) -> dict:
    """Train `stage` with the plain settings + `over` for `steps` steps from the recipe's initial weights; one row.
    `over` may also set the batching (`data.bucket`, `data.pad_to_multiple_of`; "max_length" pads every batch to the
    truncation length): applied to this variant's recipe and tokenized splits, restored afterwards."""
    over = dict(over)
    data_over = {k: over.pop(k) for k in DATA_KEYS if k in over}
    if not data_over:
        return _run_variant(recipe, stage, data, tokenizer, device, name, over, steps, warmup, run_dir, log_every)
    spec = recipe.data
    bucket = data_over.get("data.bucket", spec.bucket)
    multiple = data_over.get("data.pad_to_multiple_of", spec.pad_to_multiple_of)
    multiple = spec.max_length if multiple == "max_length" else multiple
    rec = recipe.model_copy(update={"data": spec.model_copy(update={"bucket": bucket, "pad_to_multiple_of": multiple})})
    splits = [s for s in (data.train, data.validation) if s is not None and hasattr(s, "pad_multiple")]
    saved = [(s.pad_multiple, s.max_width) for s in splits]
    for s in splits:  # classification splits were tokenized once: this variant's padding on them
        s.pad_multiple, s.max_width = multiple, spec.max_length
    try:
        row = _run_variant(rec, stage, data, tokenizer, device, name, over, steps, warmup, run_dir, log_every)
    finally:
        for s, (m, w) in zip(splits, saved):
            s.pad_multiple, s.max_width = m, w
    return {**row, "bucket": bucket, "pad_to_multiple_of": multiple}


def _run_variant(recipe, stage, data, tokenizer, device, name: str, over: dict, steps: int, warmup: int,
                 run_dir: Path, log_every: int = 1) -> dict:
    from .artifacts import load_model
    from .context import RunContext
    from .train.loop import train
    from .train.setup import set_determinism
    from .train.monitor import MetricsLog, read_metrics

    # "inductor.<option>" keys: torch._inductor.config options patched for this variant's compile only (a bench
    # knob to measure before a setting earns a recipe key; e.g. inductor.coordinate_descent_tuning)
    shown = dict(over)
    inductor = {k.split(".", 1)[1]: over.pop(k) for k in [k for k in over if k.startswith("inductor.")]}
    settings = _settings(stage, {**over, "max_steps": steps, "eval_every": None, "checkpoint_every": 0,
                                 "keep_best": False, "log_every": log_every, "early_stopping": None})
    # every variant compiles afresh: dynamo's cache would otherwise hand a later variant the graph an earlier one
    # traced (its guards do not see a different sdpa_backend context or a new model of the same shape), and its
    # first-step (compile) time would read ~0
    torch._dynamo.reset()
    set_determinism(recipe.run.seed, recipe.run.deterministic)
    model = load_model(recipe, tokenizer, data.label_names)
    log = MetricsLog(run_dir, tensorboard=False)
    if log.path.exists():
        log.path.unlink()
    ctx = RunContext(recipe=recipe, run_dir=run_dir, device=device, tokenizer=tokenizer, data=data, log=log)
    console.rule(f"[bold]bench {name}[/bold] {over or '(plain)'}")
    t0 = time.perf_counter()
    try:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(inductor) if inductor else contextlib.nullcontext():
            summary = train(model, data, settings, ctx, run_dir / "stage")
    except RecipeError as e:  # e.g. an attention kernel this machine lacks: recorded, the others go on
        return {"variant": name, "settings": over, "error": e.problem}
    except Exception as e:  # noqa: BLE001 — a technique that fails here (a kernel, a compiler error) is a result too
        console.print(f"[red]{name} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}[/red]")
        return {"variant": name, "settings": over, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    finally:
        log.close()
    logged = [r for r in read_metrics(run_dir) if r.get("tokens_per_s") is not None and r.get("step", 0) > warmup]
    tps = statistics.median(r["tokens_per_s"] for r in logged) if logged else None
    peak = measure.peak_flops(device, summary["precision"], recipe.run.peak_flops)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"variant": name, "settings": shown, "tokens_per_s": round(tps, 1) if tps else None,
            "mfu": round(tps * summary["flops_per_token"] / peak, 4) if (tps and peak) else None,
            "peak_mem_bytes": summary["peak_mem_bytes"], "first_step_s": summary["first_step_s"],
            "loss_after": logged[-1]["loss"] if logged else None, "precision": summary["precision"],
            "micro_batch": settings.batch_size, "wall_s": round(time.perf_counter() - t0, 2)}


HEAD = ["variant", "tokens/s", "speedup", "MFU", "peak mem MB", "loss after N", "Δ loss", "first step s"]


def _row(r: dict) -> list[str]:
    if r.get("error"):
        return [r["variant"], "error: " + r["error"][:60], "", "", "", "", "", ""]

    def f(v, spec):
        return "—" if v is None else format(v, spec)

    return [r["variant"], f(r["tokens_per_s"], ",.0f"), f(r.get("speedup"), ".2f") + "x", f(r["mfu"], ".1%"),
            f(None if r["peak_mem_bytes"] is None else r["peak_mem_bytes"] / 1e6, ",.0f"), f(r["loss_after"], ".4f"),
            f(r.get("loss_delta"), "+.4f"), f(r["first_step_s"], ".2f")]


def to_markdown(result: dict) -> str:
    hw = result["hardware"]
    lines = [f"# trainopt bench: {result['recipe']} ({result['stage']})", "",
             f"{hw.get('name')} ({hw['device']}), torch {hw['torch']}; {result['steps']} steps of batch "
             f"{result['batch_size']} x {result['grad_accum']}, tokens/s = median after {result['warmup_steps']} "
             "warm-up steps; every variant from the same weights, seed and batches.", "",
             "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in result["variants"]]
    return "\n".join(lines) + "\n"


def print_table(result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"bench {result['recipe']}: {result['steps']} steps, {result['hardware'].get('name')}")
    for h in HEAD:
        table.add_column(h)
    for r in result["variants"]:
        table.add_row(*_row(r))
    console.print(table)


def env_report() -> dict:
    """The hardware, the software and the settings trainopt would pick here."""
    from .version import __version__
    from .train.setup import resolve_precision

    device = measure.pick_device("auto")
    hw = measure.hardware_info(device)
    precision = resolve_precision("auto", device)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rec = {"precision": precision, "optimizer.fused": device.type == "cuda", "attention": "sdpa",
           "compile": device.type == "cuda", "nproc": max(gpus, 1),
           "threads": torch.get_num_threads() if device.type == "cpu" else None}
    if device.type == "cuda":
        from .train.fp8 import why_unsupported

        # short-sequence classification is host-bound on a fast GPU: CUDA graphs on one padded shape (measured 2.15x
        # the HF Trainer on BERT-base, docs/methods/acceleration.md). fp8: the GPU may have the kernels, but on GPT-2
        # 124M (768/3072-wide matmuls) it measured 0.90x of bf16 (H200) — available, not recommended at that size
        rec["classification"] = {"compile_mode": "reduce-overhead", "compile_dynamic": "static",
                                 "data.pad_to_multiple_of": "= data.max_length", "data.bucket": False}
        from .train.fa4 import why_unavailable

        # causal LMs: the settings of the fastest measured GPT-2 124M run on an H200 (RESULTS.md: the bench's best
        # variant 499k tokens/s; `trainopt run gpt2-124m` at them 490k steady, 0.98x), which recipes/gpt2-124m.yaml uses
        rec["causal_lm"] = {"attention": "fa4" if why_unavailable(device) is None else "sdpa_causal",
                            "lm_loss": "chunked", "lm_loss_vocab_multiple": 64,
                            "batch_size": "the largest that fits (64 x 1024 tokens for GPT-2 124M: 28.7 GB)",
                            "recovery.enabled": "false for speed (its per-step loss read cost 7%); true to roll back "
                                                "spikes", "async_checkpoint": "auto (on CUDA)"}
        rec["fp8_available"] = why_unsupported(device) is None
        rec["fp8"] = "off (measured slower than bf16 at GPT-2 124M widths; try it on wider models with trainopt bench)"
        from .compress.prune import sparse24

        # 2:4 through cuSPARSELt (compress/prune/sparse24.py): measured on an H200, 1.09–1.16x the fastest dense BERT-base
        # at 256 × 128 tokens compiled with CUDA graphs, not faster at ≤ 8k tokens or in eager mode
        rec["sparse_2of4"] = ("cuSPARSELt: faster only compiled with CUDA graphs and ≥ ~32k tokens a batch on "
                              "BERT-base-wide layers" if sparse24.available(device) else "no cuSPARSELt here")
    else:
        dot = measure.cpu_int8_dot()
        # MiniLM-L6 at batch 32 (benchmarks/RESULTS.md): 2.19x with AVX512-VNNI, 1.36–1.58x on an AVX2-only EPYC
        rec["dynamic_int8"] = (f"int8 dot products ({', '.join(dot)}): ~2x over fp32 expected" if dot else
                               "no VNNI/AMX: ~1.4x over fp32 expected (the Linears' int8 speed bounds it)")
    try:
        import transformers

        tf = transformers.__version__
    except ImportError:
        tf = None
    return {"trainopt": __version__, "torch": torch.__version__, "transformers": tf, "hardware": hw,
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(gpus)],
            "peak_flops": measure.peak_flops(device, precision, None), "cpu_count": os.cpu_count(),
            "recommended": rec}
