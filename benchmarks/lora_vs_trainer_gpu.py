"""LoRA instruction fine-tuning on one GPU (issue 23): `trainopt run` with a `lora` stage against the Hugging Face
Trainer + PEFT at its best settings, on the same model, the same conversations (builtin:definitions, tokenised by
trainopt's data/sft.py so both see the same tokens and response masks) and the same LoRA config (r 16, alpha 32,
dropout 0.05, all-linear).

- trainopt: the user's path (`python -m trainopt run` on a recipe written here): packed 1024-token rows, bf16
  autocast, torch.compile, fused AdamW, the chunked linear + cross-entropy head (no full logits tensor), SDPA;
  tokens/s is the report's steady state (median log window after the first), peak memory the training's.
- HF Trainer + PEFT: `get_peft_model` with the same LoraConfig; bf16, torch_compile, adamw_torch_fused, SDPA,
  batches grouped by length (its answer to padding), one example per row padded per batch (labels -100 on prompts
  and padding); the base loaded in bf16 (the usual LoRA setting, less memory) or fp32 (`--trainer-dtypes`), at
  each micro-batch of `--trainer-batches`; tokens/s timed by a callback over the steps after the warm-up
  (CUDA-synchronised), counting real (non-padding) tokens, peak memory from torch.cuda.max_memory_allocated.
Each variant runs in its own process (no shared compile caches or allocator state). Activation checkpointing is on
for both or off for both (`--checkpointing`).

    python benchmarks/lora_vs_trainer_gpu.py --model smollm2 --steps 60 --out runs/lora-gpu
    python benchmarks/lora_vs_trainer_gpu.py --model llama1b --checkpointing --trainer-batches 64,128 \
        --trainopt-batches 8,16 --trainopt-quant none,nf4   # nf4: QLoRA's memory and speed against LoRA's

Both models are built from their configs with random weights and SmolLM2's tokenizer (speed and memory depend on the
shapes, not the values; SmolLM2's 514 MB of weights cannot travel to the GPU machine, and no 1B weights are
installable here): `--model smollm2` SmolLM2-135M's shapes (30 layers, hidden 576, 9 heads / 3 KV heads, MLP 1536,
tied embeddings); `--model llama1b` Llama-3.2-1B's (16 layers, hidden 2048, 32 heads / 8 KV heads, MLP 8192, tied
embeddings) with a 49,152 vocabulary instead of Llama-3's 128,256. CPU smoke run: `--tiny` (a 2-layer model, no
timing claim).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

TIMEOUT = [300]  # seconds per variant (--variant-timeout)
LM_LOSS_CHUNK = [4096]  # trainopt's positions per head chunk (--lm-loss-chunk): less memory when smaller
LORA = {"rank": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
LLAMA_1B = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 2048,
            "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}, "tie_word_embeddings": True, "rms_norm_eps": 1e-5}
SMOLLM2_135M = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "max_position_embeddings": 8192,
                "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "tie_word_embeddings": True, "rms_norm_eps": 1e-5}
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024}


def recipe(model: str, batch: int, steps: int, block: int, checkpointing: bool, tiny: bool,
           quant: str = "none", compile_: bool = True) -> dict:
    cuda = not tiny
    config = TINY if tiny else SMOLLM2_135M if model == "smollm2" else LLAMA_1B
    spec = {"config": config, "tokenizer": "builtin:smollm2-135m"}
    return {"name": "lora-gpu", "task": "causal_lm", "model": spec,
            "data": {"source": "builtin:definitions", "sft": {}, "block_size": block, "max_validation_examples": 64,
                     "max_test_examples": 64},
            "stages": [{"kind": "lora", "name": "lora", **LORA, "quantize_base": quant, "max_steps": steps,
                        "batch_size": batch,
                        "precision": "bf16" if cuda else "fp32", "compile": cuda and compile_, "lm_loss": "chunked",
                        "lm_loss_chunk": LM_LOSS_CHUNK[0],
                        "attention": "sdpa", "activation_checkpointing": checkpointing, "checkpoint_every": 0,
                        "eval_every": steps, "keep_best": False, "log_every": 5, "recovery": {"enabled": False},
                        "optimizer": {"lr": 2e-4, "weight_decay": 0.0}, "schedule": {"name": "cosine",
                                                                                      "warmup_steps": 5}}],
            "run": {"progress": False, "tensorboard": False},
            "measure": {"latency": False, "samples": 0, "generate_tokens": 0}}


def _timed_out(log: Path, tag: str, e: subprocess.TimeoutExpired) -> dict:
    """A variant past --variant-timeout: what it printed so far kept in its log."""
    text = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
    log.write_text(text)
    return {"variant": tag, "error": f"over {TIMEOUT[0]} s", "log_tail": text[-400:]}


def run_trainopt(out: Path, raw: dict, tag: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(raw))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "trainopt", "run", str(path), "--out", str(out / tag),
                               "--overwrite"], capture_output=True, text=True, timeout=TIMEOUT[0])
    except subprocess.TimeoutExpired as e:
        return _timed_out(out / f"{tag}.log", tag, e)
    (out / f"{tag}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"variant": tag, "error": (proc.stderr or proc.stdout)[-800:]}
    stage = json.loads((out / tag / "report.json").read_text())["stages"][0]
    t = stage["training"]
    return {"variant": tag, "system": "trainopt", "micro_batch": t["micro_batch"], "rows": "packed",
            "tokens_per_s": t["steady_tokens_per_s"], "whole_stage_tokens_per_s": t["tokens_per_s"],
            "mfu": t["steady_mfu"], "peak_mem_bytes": t["peak_mem_bytes"], "first_step_s": t["first_step_s"],
            "process_wall_s": round(time.perf_counter() - t0, 1), "test_loss": stage["quality"]["loss"],
            "trainable_fraction": stage["lora"]["trainable_fraction"], "quantize_base": stage["lora"]["quantize_base"],
            "tokens_per_step": t.get("tokens_per_step")}


def trainer_child(args) -> dict:
    """One Trainer + PEFT run in this process (called through --child)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from trainopt.data import sft
    from trainopt.data.prepare import load_texts
    from trainopt.models import load_model, load_tokenizer
    from trainopt.recipe import parse_recipe
    from trainopt.train.setup import set_determinism

    raw = recipe(args.model, args.batch, args.steps, args.block, args.checkpointing, args.tiny)
    rec = parse_recipe(raw)
    texts = load_texts(rec)
    tok = load_tokenizer(rec)
    chat = sft.uses_chat_template(tok, "auto")
    examples = [(ids[: args.block], lab[: args.block]) for ids, lab in sft.encode(texts.train, tok, chat, "response")]
    rows = [{"input_ids": ids, "labels": lab} for ids, lab in examples]
    produced: list[int] = []

    def collate(batch):
        width = max(len(e["input_ids"]) for e in batch)
        width = -(-width // args.pad_multiple) * args.pad_multiple
        ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[r, :n], labels[r, :n], mask[r, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
        produced.append(int(mask.sum()))
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    cuda = torch.cuda.is_available() and not args.tiny
    stamps: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    set_determinism(0, False)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = load_model(rec, tok).to(dtype)  # the same seeded random init as trainopt's (run.seed)
    model = get_peft_model(model, LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules="all-linear", task_type=TaskType.CAUSAL_LM))
    import dataclasses

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    grouping = {"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in fields else \
        {"group_by_length": True}
    targs = TrainingArguments(
        output_dir=str(Path(args.out) / "trainer-tmp"), per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=2e-4, weight_decay=0.0, warmup_steps=5, lr_scheduler_type="cosine", bf16=cuda,
        torch_compile=cuda and args.compile == "on", optim="adamw_torch_fused" if cuda else "adamw_torch", max_grad_norm=1.0,
        gradient_checkpointing=args.checkpointing, logging_steps=args.steps, save_strategy="no", report_to=[],
        dataloader_drop_last=True, seed=0, use_cpu=not cuda, disable_tqdm=True, remove_unused_columns=False,
        **grouping)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(model=model, args=targs, train_dataset=rows, data_collator=collate, callbacks=[Timer()])
    t0 = time.perf_counter()
    result = trainer.train()
    per_step = [b - a for a, b in zip(stamps[args.warmup:-1], stamps[args.warmup + 1:])]
    tokens = statistics.mean(produced[args.warmup:] or produced)
    tps = tokens / statistics.median(per_step) if per_step else None
    return {"variant": _trainer_tag(args.dtype, args.batch, args.compile), "system": "hf_trainer+peft",
            "micro_batch": args.batch, "rows": "one example per row, grouped by length", "base_dtype": args.dtype,
            "compile": args.compile, "pad_multiple": args.pad_multiple,
            "tokens_per_s": round(tps, 1) if tps else None, "peak_mem_bytes":
            torch.cuda.max_memory_allocated() if cuda else None, "first_step_s": round(stamps[0] - t0, 2),
            "wall_s": round(time.perf_counter() - t0, 1), "train_loss": result.training_loss,
            "tokens_per_step": round(tokens)}


def _trainer_tag(dtype: str, batch: int, compile_: str) -> str:
    return f"trainer_{dtype}_b{batch}" + ("_compiled" if compile_ == "on" else "")


def run_trainer(args, batch: int, dtype: str, compile_: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--block", str(args.block), "--batch", str(batch), "--dtype", dtype, "--out", args.out,
           "--compile", compile_, "--pad-multiple", str(args.pad_multiple)]
    cmd += ["--checkpointing"] if args.checkpointing else []
    cmd += ["--tiny"] if args.tiny else []
    tag = _trainer_tag(dtype, batch, compile_)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT[0])
    except subprocess.TimeoutExpired as e:
        return _timed_out(Path(args.out) / f"{tag}.log", tag, e)
    (Path(args.out) / f"{tag}.log").write_text(proc.stdout + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"variant": tag, "error": (proc.stderr or proc.stdout)[-800:]}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["smollm2", "llama1b"], default="smollm2")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--trainer-batches", default="64,128,256")
    ap.add_argument("--trainer-dtypes", default="bf16")
    # the Trainer's compile recompiles for each new padded width until dynamo marks the width dynamic: measured both
    # ways, each at the batches listed for it (--trainer-compiled-batches)
    ap.add_argument("--trainer-compiled-batches", default="256")
    ap.add_argument("--pad-multiple", type=int, default=64, help="the Trainer's batches padded to a multiple of this")
    ap.add_argument("--trainopt-batches", default="8,16")
    ap.add_argument("--trainopt-quant", default="none", help="base formats for trainopt: none,nf4 (QLoRA)")
    ap.add_argument("--trainopt-compile", default="on", choices=["on", "off"])
    ap.add_argument("--lm-loss-chunk", type=int, default=4096)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default="runs/lora-gpu")
    ap.add_argument("--variant-timeout", type=int, default=300)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--compile", default="off")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(trainer_child(args)), flush=True)
        return
    TIMEOUT[0] = args.variant_timeout
    LM_LOSS_CHUNK[0] = args.lm_loss_chunk
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for quant in [q for q in args.trainopt_quant.split(",") if q]:
        for b in [int(x) for x in args.trainopt_batches.split(",") if x]:
            raw = recipe(args.model, b, args.steps, args.block, args.checkpointing, args.tiny, quant,
                         args.trainopt_compile == "on")
            tag = f"trainopt_b{b}" + ("" if quant == "none" else f"_{quant}") + \
                ("" if args.trainopt_compile == "on" else "_eager")
            rows.append(run_trainopt(out, raw, tag))
            print(json.dumps(rows[-1]), flush=True)
    for dtype in [d for d in args.trainer_dtypes.split(",") if d]:
        for compile_, batches in (("off", args.trainer_batches), ("on", args.trainer_compiled_batches)):
            for b in [int(x) for x in batches.split(",") if x]:
                rows.append(run_trainer(args, b, dtype, compile_))
                print(json.dumps(rows[-1]), flush=True)
    ok = [r for r in rows if r.get("tokens_per_s")]
    lora = [r for r in ok if r.get("quantize_base", "none") == "none"]  # QLoRA rows are compared to LoRA below
    best = {s: max((r for r in lora if r["system"] == s), key=lambda r: r["tokens_per_s"], default=None)
            for s in ("trainopt", "hf_trainer+peft")}
    summary = {"model": args.model, "checkpointing": args.checkpointing, "rows": rows, "best": best}
    if best["trainopt"] and best["hf_trainer+peft"]:
        a, b = best["trainopt"], best["hf_trainer+peft"]
        summary["speedup_best_vs_best"] = round(a["tokens_per_s"] / b["tokens_per_s"], 3)
        if a.get("peak_mem_bytes") and b.get("peak_mem_bytes"):
            summary["peak_mem_ratio_best_vs_best"] = round(a["peak_mem_bytes"] / b["peak_mem_bytes"], 3)
    for q in (r for r in ok if r.get("quantize_base", "none") != "none"):  # QLoRA against LoRA at the same batch
        same = next((r for r in lora if r["system"] == "trainopt" and r["micro_batch"] == q["micro_batch"]), None)
        if same and q.get("peak_mem_bytes") and same.get("peak_mem_bytes"):
            summary[f"{q['variant']}_vs_lora"] = {
                "peak_mem_ratio": round(q["peak_mem_bytes"] / same["peak_mem_bytes"], 3),
                "tokens_per_s_ratio": round(q["tokens_per_s"] / same["tokens_per_s"], 3),
                "test_loss": [same["test_loss"], q["test_loss"]]}
    (out / "result.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
