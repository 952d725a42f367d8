"""The Hugging Face Trainer at its best settings vs trainopt, side by side in one process on one GPU (issue 3).

Same model class, same random initialisation, same tokenised data, same micro-batch:
- gpt2: GPT2LMHeadModel(GPT2Config()) — 124M, random init — on the Austen novels in 1024-token blocks;
- bert: BertForSequenceClassification(BertConfig()) — BERT-base, random init — on the fine-food reviews, ≤ 128 tokens.

The Trainer runs with bf16, torch_compile and adamw_torch_fused (and SDPA attention, transformers' default); its
tokens/s is timed by a callback over the steps after the warm-up (CUDA-synchronised), with the tokens its collator
produced. trainopt runs its train loop (`trainopt.bench.run_variant`) with the variants listed; tokens/s is the
median of its per-step log after the same warm-up. Real (non-padding) tokens are counted on both sides. MFU uses
trainopt's FLOP count (6·N + attention) against the device's dense bf16 peak.

    python benchmarks/hf_trainer_vs_trainopt.py --case gpt2 --steps 40 --warmup 10 --out runs/vs-trainer-gpt2
    python benchmarks/hf_trainer_vs_trainopt.py --case bert --batch 64 --out runs/vs-trainer-bert
    python benchmarks/hf_trainer_vs_trainopt.py --case gpt2 --trainer-batches 16,32,64 --variants chunked_ce_x4_batch_vocab64_causal
    python benchmarks/hf_trainer_vs_trainopt.py --case gpt2 --no-trainer --nanogpt path/to/nanoGPT/model.py --variants …

`--nanogpt`: nanoGPT (github.com/karpathy/nanoGPT, MIT) as a third column — its `model.py`, which the user supplies
(it is not carried in this repository), trained the way its train.py trains GPT-2: GPTConfig() (bias, no dropout,
vocabulary padded to 50,304), bf16 autocast, torch.compile, its fused AdamW groups, gradient clipping at 1.0, on the
same blocks (targets: the block shifted by one, the last position ignored — the same 1,023 predictions a row as
GPT2LMHeadModel), timed like trainopt's rows (per step, synchronised by reading the loss).

`vs Trainer` is against the fastest Trainer row (each system at its own best micro-batch).

CPU smoke test (tiny model, a few steps, no compile/bf16): add `--tiny` (no timing claim).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import trainopt
from trainopt import measure
from trainopt.bench import run_variant
from trainopt.data.prepare import tokenize
from trainopt.models import load_model, load_tokenizer
from trainopt.runner import validate

BEST = {"precision": "bf16", "attention": "sdpa", "optimizer.fused": True, "compile": True}
ASYNC = {**BEST, "recovery.enabled": False}  # no per-step host sync (non-finite steps skipped on the GPU)
VARIANTS = {  # name → trainopt settings on top of the plain ones ("data.bucket" is the recipe's data key)
    "same_as_trainer": BEST,
    "async": ASYNC,
    "async_padded": {**ASYNC, "data.bucket": False},  # classification: pad like the Trainer (no length buckets)
    # classification: length buckets padded to multiples of 16 tokens (7 widths on the reviews), one static compiled
    # graph per width — bucketing's padding savings without dynamic-shape kernels
    "async_bucket16_static": {**ASYNC, "data.pad_to_multiple_of": 16, "compile_dynamic": "static"},
    # CUDA graphs (compile mode reduce-overhead) on static shapes: every batch padded to 128, or 4 bucket widths
    "async_pad128_graphs": {**ASYNC, "data.bucket": False, "data.pad_to_multiple_of": "max_length",
                            "compile_dynamic": "static", "compile_mode": "reduce-overhead"},
    "async_bucket32_graphs": {**ASYNC, "data.pad_to_multiple_of": 32, "compile_dynamic": "static",
                              "compile_mode": "reduce-overhead"},
    # the padded run with torch.profiler over steps 20-22 (stage/profile/: a trace and the costliest ops)
    "async_padded_profile": {**ASYNC, "data.bucket": False, "profile": {"start": 20, "steps": 3}},
    "chunked_ce": {**ASYNC, "lm_loss": "chunked"},
    "liger_ce": {**ASYNC, "lm_loss": "liger"},
    "liger_ce_x2_batch": {**ASYNC, "lm_loss": "liger", "batch_size": "x2"},
    "chunked_ce_x2_batch": {**ASYNC, "lm_loss": "chunked", "batch_size": "x2"},
    "chunked_ce_x4_batch": {**ASYNC, "lm_loss": "chunked", "batch_size": "x4"},
    # the same with the head's matmuls on the vocabulary padded to a multiple of 64 (50,257 → 50,304)
    "chunked_ce_x4_batch_vocab64": {**ASYNC, "lm_loss": "chunked", "batch_size": "x4", "lm_loss_vocab_multiple": 64},
    "chunked_ce_x4_batch_vocab64_fp8": {**ASYNC, "lm_loss": "chunked", "batch_size": "x4", "lm_loss_vocab_multiple": 64,
                                        "fp8": "tensorwise"},
    "chunked_ce_x4_batch_vocab64_fp8_rowwise": {**ASYNC, "lm_loss": "chunked", "batch_size": "x4",
                                                "lm_loss_vocab_multiple": 64, "fp8": "rowwise"},
    # the fastest GPT-2 setting with torch.profiler over steps 20-22 (where do the other ~60% of the bf16 peak go?)
    "chunked_ce_x4_batch_vocab64_profile": {**ASYNC, "lm_loss": "chunked", "batch_size": "x4",
                                            "lm_loss_vocab_multiple": 64, "profile": {"start": 20, "steps": 3}},
    # the same with one attention kernel forced (cuDNN's is PyTorch's choice on an H200 and 27% of the step)
    "chunked_ce_x4_batch_vocab64_flash": {**ASYNC, "lm_loss": "chunked", "batch_size": "x4",
                                          "lm_loss_vocab_multiple": 64, "sdpa_backend": "flash"},
    "chunked_ce_x4_batch_vocab64_efficient": {**ASYNC, "lm_loss": "chunked", "batch_size": "x4",
                                              "lm_loss_vocab_multiple": 64, "sdpa_backend": "efficient"},
    # SDPA told is_causal instead of handed the mask transformers builds under compile (attention: sdpa_causal)
    "chunked_ce_x4_batch_vocab64_causal": {**ASYNC, "lm_loss": "chunked", "batch_size": "x4",
                                           "lm_loss_vocab_multiple": 64, "attention": "sdpa_causal"},
    "chunked_ce_x4_batch_vocab64_causal_flash": {**ASYNC, "lm_loss": "chunked", "batch_size": "x4",
                                                 "lm_loss_vocab_multiple": 64, "attention": "sdpa_causal",
                                                 "sdpa_backend": "flash"},
    "chunked_ce_x4_batch_vocab64_causal_profile": {**ASYNC, "lm_loss": "chunked", "batch_size": "x4",
                                                   "lm_loss_vocab_multiple": 64, "attention": "sdpa_causal",
                                                   "profile": {"start": 20, "steps": 3}},
    # FlashAttention-4's CuTe kernels in place of SDPA (attention: fa4; needs the flash-attn-4 package, Hopper+)
    "chunked_ce_x4_batch_vocab64_fa4": {**ASYNC, "lm_loss": "chunked", "batch_size": "x4",
                                        "lm_loss_vocab_multiple": 64, "attention": "fa4"},
    # issue 22, closing on nanoGPT: the fastest setting with inductor's coordinate-descent tuning of its Triton
    # kernels' launch parameters, with 4x larger head chunks (16 fp32 grad_w accumulations a step → 4), whole-step
    # CUDA graphs, and profiled with the full op table
    "causal_cdt": {**ASYNC, "lm_loss": "chunked", "batch_size": "x4", "lm_loss_vocab_multiple": 64,
                   "attention": "sdpa_causal", "inductor.coordinate_descent_tuning": True},
    "causal_chunk16k": {**ASYNC, "lm_loss": "chunked", "batch_size": "x4", "lm_loss_vocab_multiple": 64,
                        "attention": "sdpa_causal", "lm_loss_chunk": 16384},
    "causal_graphs": {**ASYNC, "lm_loss": "chunked", "batch_size": "x4", "lm_loss_vocab_multiple": 64,
                      "attention": "sdpa_causal", "compile_mode": "reduce-overhead"},
    "causal_profile80": {**ASYNC, "lm_loss": "chunked", "batch_size": "x4", "lm_loss_vocab_multiple": 64,
                         "attention": "sdpa_causal", "profile": {"start": 20, "steps": 3, "top": 80}},
    "cuda_graphs": {**ASYNC, "compile_mode": "reduce-overhead"},
    "autotune": {**ASYNC, "compile_mode": "max-autotune-no-cudagraphs"},
}


def recipe_for(case: str, batch: int, tiny: bool, tokenizer: str | None = None) -> dict:
    if case == "gpt2":
        raw = trainopt.load_recipe("gpt2-124m").model_dump(mode="json")
        if tiny:
            raw["model"]["config"].update({"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 128})
            raw["data"]["block_size"] = 128
    else:
        raw = trainopt.load_recipe("quickstart").model_dump(mode="json")
        raw["stages"] = [next(s for s in raw["stages"] if s["kind"] == "train")]
        tok = tokenizer or raw["model"]["path"]  # BERT's WordPiece vocabulary (MiniLM's is BERT's)
        raw["model"] = {"config": {"model_type": "bert", **({"num_hidden_layers": 2, "hidden_size": 64,
                                                              "num_attention_heads": 2, "intermediate_size": 128}
                                                             if tiny else {})}, "tokenizer": tok}
        raw["data"]["max_length"] = 128
    stage = raw["stages"][0]
    stage.update({"batch_size": batch, "grad_accum": 1, "optimizer": {**stage["optimizer"], "fused": None},
                  "precision": "auto"})
    raw["run"]["progress"] = False
    raw["run"]["tensorboard"] = False
    return raw


def _length_grouping(on: bool) -> dict:
    """The Trainer's batches of similar lengths: `group_by_length` up to transformers 4, the
    `train_sampling_strategy` choice in 5."""
    import dataclasses

    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "train_sampling_strategy" in fields:
        return {"train_sampling_strategy": "group_by_length" if on else "random"}
    return {"group_by_length": on}


def run_trainer(recipe, data, tokenizer, device, batch: int, steps: int, warmup: int, out: Path,
                log_every: int = 1) -> dict:
    """The Hugging Face Trainer: bf16 + torch_compile + adamw_torch_fused, timed after `warmup` steps; on
    classification with `group_by_length` (its own answer to padding waste: batches of similar lengths)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from trainopt.train.setup import set_determinism

    lm = recipe.task == "causal_lm"
    split = data.train
    if lm:
        rows = [{"input_ids": split.blocks[i], "labels": split.blocks[i]} for i in range(len(split))]
    else:
        rows = [{"input_ids": split.input_ids[i], "labels": split.labels[i]} for i in range(len(split))]
    produced: list[int] = []  # real tokens of every batch the collator built, in order

    def collate(examples):
        if lm:
            ids = torch.stack([e["input_ids"] for e in examples])
            produced.append(ids.numel())
            return {"input_ids": ids, "labels": ids}
        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, e in enumerate(examples):
            ids[r, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            mask[r, : len(e["input_ids"])] = 1
        produced.append(int(mask.sum()))
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([e["labels"] for e in examples])}

    stamps: list[tuple[int, float]] = []  # (step, time) every `log_every` steps, synchronised

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step % log_every and state.global_step != 1:
                return
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append((state.global_step, time.perf_counter()))

    set_determinism(recipe.run.seed, False)
    model = load_model(recipe, tokenizer, data.label_names)
    stage = recipe.stages[0]
    bf16 = device.type == "cuda"
    args = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=batch, max_steps=steps,
        learning_rate=stage.optimizer.lr, weight_decay=stage.optimizer.weight_decay, warmup_steps=min(5, steps),
        lr_scheduler_type="cosine", bf16=bf16, torch_compile=bf16, remove_unused_columns=False, optim="adamw_torch_fused" if bf16 else "adamw_torch",
        max_grad_norm=stage.max_grad_norm or 0.0, logging_steps=steps, save_strategy="no", report_to=[],
        dataloader_drop_last=True, seed=recipe.run.seed, use_cpu=device.type != "cuda", disable_tqdm=True,
        **_length_grouping(not lm))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Timer()])
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    tokens_per_batch = statistics.mean(produced) if produced else 0
    tps = _window_rate(stamps, warmup, tokens_per_batch)
    del trainer, model
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated()
        torch.cuda.empty_cache()
    else:
        peak_mem = None
    return {"variant": f"hf_trainer_b{batch}", "tokens_per_s": round(tps, 1) if tps else None, "wall_s": round(wall, 2),
            "first_step_s": round(stamps[0][1] - t0, 2) if stamps else None, "loss_after": result.training_loss,
            "peak_mem_bytes": peak_mem, "micro_batch": batch,
            "settings": {"bf16": bf16, "torch_compile": bf16, "optim": args.optim, "attention": "sdpa (default)",
                         "group_by_length": not lm}}


def _window_rate(stamps: list[tuple[int, float]], warmup: int, tokens_per_step: float) -> float | None:
    """Tokens/s: the median over the windows between synchronised stamps (step, time) that start after `warmup`."""
    rates = [tokens_per_step * (sb - sa) / (b - a) for (sa, a), (sb, b) in zip(stamps, stamps[1:])
             if sa >= warmup and b > a]
    return statistics.median(rates) if rates else None


def run_nanogpt(path: str, data, device, batch: int, steps: int, warmup: int, lr: float, out: Path,
                shape: dict, profile: bool = False, log_every: int = 1) -> dict:
    """nanoGPT's model.py trained as its train.py trains it (see the module docstring); one row."""
    import importlib.util
    import random

    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch._dynamo.reset()
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True  # as nanoGPT's train.py sets them
    torch.backends.cudnn.allow_tf32 = True
    blocks = data.train.blocks
    model = mod.GPT(mod.GPTConfig(block_size=blocks.shape[1], **shape)).to(device)  # the HF model's shape
    optimizer = model.configure_optimizers(0.1, lr, (0.9, 0.95), device.type)
    model = torch.compile(model) if device.type == "cuda" else model
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    order: list[int] = []
    rng = random.Random(0)

    def batch_ids():
        nonlocal order
        if len(order) < batch:  # a fresh shuffle each epoch, the ragged rest dropped (as trainopt's recipe does)
            order = list(range(len(blocks)))
            rng.shuffle(order)
        take, order = order[:batch], order[batch:]
        x = blocks[take].to(device, non_blocking=True)
        y = torch.roll(x, -1, dims=1)
        y[:, -1] = -1
        return x, y

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    prof = None
    stamps, losses = [], []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        if profile and step == 20 and device.type == "cuda":
            from torch.profiler import ProfilerActivity, profile as tprofile

            prof = tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            prof.__enter__()
        x, y = batch_ids()
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == 1:  # nanoGPT reads the loss (a sync) at its log steps only
            losses.append(loss.item())
            stamps.append((step, time.perf_counter()))
        if prof is not None and step == 22:
            torch.cuda.synchronize()
            prof.__exit__(None, None, None)
            (out / "nanogpt_profile").mkdir(parents=True, exist_ok=True)
            (out / "nanogpt_profile" / "top_ops.txt").write_text(
                prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=80))
            prof = None
    tps = _window_rate(stamps, warmup, batch * blocks.shape[1])
    peak_mem = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"variant": "nanogpt" + ("_profile" if profile else ""), "tokens_per_s": round(tps, 1) if tps else None,
            "micro_batch": batch, "first_step_s": round(stamps[0][1] - t0, 2), "loss_after": round(losses[-1], 4),
            "peak_mem_bytes": peak_mem, "wall_s": round(time.perf_counter() - t0, 2),
            "settings": {"model": path, "bf16_autocast": device.type == "cuda", "compile": device.type == "cuda",
                         "fused_adamw": device.type == "cuda", "grad_clip": 1.0}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=["gpt2", "bert"], default="gpt2")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--variants", default="same_as_trainer,async,chunked_ce,liger_ce,liger_ce_x2_batch")
    ap.add_argument("--no-trainer", action="store_true")
    ap.add_argument("--log-every", type=int, default=1, help="steps between synchronised timings (every system): 1 "
                    "times each step; 10 is trainopt's GPT-2 recipe and nanoGPT's GPT-2 config (log_interval)")
    ap.add_argument("--trainer-batches", default=None, help="the Trainer's micro-batches to try, e.g. 16,32,64 "
                    "(default: --batch); the ratios are against its best (issue 22: each system at its own best)")
    ap.add_argument("--tokenizer", default=None, help="bert: a local folder with BERT's tokenizer (default MiniLM's)")
    ap.add_argument("--nanogpt", default=None, help="gpt2: nanoGPT's model.py (a local file) as a third column")
    ap.add_argument("--nanogpt-batches", default="64", help="nanoGPT's micro-batches (its best is the reference)")
    ap.add_argument("--nanogpt-profile", action="store_true", help="torch.profiler over nanoGPT's steps 20-22")
    ap.add_argument("--tiny", action="store_true", help="a tiny model: a smoke test of the script, not a benchmark")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or f"runs/vs-trainer-{args.case}")
    out.mkdir(parents=True, exist_ok=True)
    recipe, device, texts = validate(recipe_for(args.case, args.batch, args.tiny, args.tokenizer))
    tokenizer = load_tokenizer(recipe, texts.train)
    data = tokenize(texts, tokenizer, recipe)
    model = load_model(recipe, tokenizer, data.label_names)
    seq = data.train.blocks.shape[1] if recipe.task == "causal_lm" else 128
    fpt = measure.flops_per_token(model, seq)
    shape = {k: getattr(model.config, k) for k in ("n_layer", "n_head", "n_embd")} if args.case == "gpt2" else {}
    del model
    peak = measure.peak_flops(device, "bf16", recipe.run.peak_flops)
    rows = []
    trainer_rows = []
    if not args.no_trainer:
        for b in [int(x) for x in (args.trainer_batches or str(args.batch)).split(",")]:
            trainer_rows.append(run_trainer(recipe, data, tokenizer, device, b, args.steps, args.warmup, out,
                                            args.log_every))
            (out / "partial.json").write_text(json.dumps(trainer_rows, indent=1, default=str))
        rows += trainer_rows
    stage = recipe.stages[0]
    nano_rows = []
    if args.nanogpt and recipe.task == "causal_lm":
        for b in [int(x) for x in args.nanogpt_batches.split(",")]:
            nano_rows.append(run_nanogpt(args.nanogpt, data, device, b, args.steps, args.warmup, stage.optimizer.lr,
                                         out, shape, profile=args.nanogpt_profile, log_every=args.log_every))
            (out / "partial.json").write_text(json.dumps(rows + nano_rows, indent=1, default=str))
        rows += nano_rows
    for name in [v for v in args.variants.split(",") if v]:
        over = dict(VARIANTS[name])
        if str(over.get("batch_size", "")).startswith("x"):
            over["batch_size"] = args.batch * int(over["batch_size"][1:])
        if device.type != "cuda":  # the CPU smoke test: no bf16/fused/CUDA-only kernels
            over = {k: v for k, v in over.items() if k not in ("precision", "optimizer.fused", "compile",
                                                               "compile_mode")}
            if over.get("lm_loss") == "liger":
                continue
        rows.append(run_variant(recipe, stage, data, tokenizer, device, name, over, args.steps, args.warmup,
                                out / name, log_every=args.log_every))
        (out / "partial.json").write_text(json.dumps(rows, indent=1, default=str))
    ref = max((r.get("tokens_per_s") or 0 for r in trainer_rows), default=0) or None  # the Trainer at its best
    nano = max((r.get("tokens_per_s") or 0 for r in nano_rows), default=0) or None  # nanoGPT at its best
    for r in rows:
        if r.get("tokens_per_s"):
            r["mfu"] = round(r["tokens_per_s"] * fpt / peak, 4) if peak else None
            r["vs_trainer"] = round(r["tokens_per_s"] / ref, 3) if ref else None
            r["vs_nanogpt"] = round(r["tokens_per_s"] / nano, 3) if nano else None
    result = {"case": args.case, "hardware": measure.hardware_info(device), "steps": args.steps,
              "warmup": args.warmup, "batch": args.batch, "seq": seq, "flops_per_token": fpt, "rows": rows}
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"\n{args.case} on {result['hardware'].get('name')}, micro-batch {args.batch}, seq {seq}, "
          f"{args.steps} steps ({args.warmup} warm-up)")
    print("| run | micro-batch | tokens/s | vs Trainer | vs nanoGPT | MFU | peak mem GB | loss | first step s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("error"):
            print(f"| {r['variant']} | error: {r['error'][:80]} |")
            continue
        mem = f"{r['peak_mem_bytes'] / 1e9:.1f}" if r.get("peak_mem_bytes") else "—"
        print(f"| {r['variant']} | {r.get('micro_batch')} | {r['tokens_per_s'] or 0:,.0f} | "
              f"{r.get('vs_trainer') or '—'} | {r.get('vs_nanogpt') or '—'} | {(r.get('mfu') or 0):.1%} | {mem} | "
              f"{r.get('loss_after')} | "
              f"{r.get('first_step_s')} |")


if __name__ == "__main__":
    main()
