"""SmolLM2-135M in bf16 vs weight-only int8 / int4, side by side in one process (issue 6, GPU part).

For each variant, from the same weights: weight bytes in memory (integer data + scales), perplexity on held-out
Persuasion (the lm-int8 recipe's test blocks), decode tokens/s at batch 1 (greedy, --new tokens, eager and, with
--compile, with a static KV cache, which `generate` compiles on CUDA), and prefill throughput (batch 8 × 256 tokens).
int4 groups: `weight_only_int4:G`, with HQQ's scales and zeros: `weight_only_int4:G:hqq`, with the vocabulary
embedding (and the tied head) in int4 groups of N too: `…:e4gN`; Linears whose width G does not divide stay in bf16 (counted in the table). On a CPU
the same code runs (PyTorch's CPU int4 kernel) as a smoke test; its timings describe that CPU only.

    python benchmarks/weight_only_gpu.py --model ~/.cache/trainopt/models/smollm2-135m [--compile]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time

import torch

import trainopt
from trainopt import measure
from trainopt.assets import asset_path
from trainopt.compress.quantize import weight_only
from trainopt.data.prepare import tokenize
from trainopt.artifacts import load_saved
from trainopt.runner import validate


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def perplexity(model, blocks: torch.Tensor, device) -> float:
    total, count = 0.0, 0
    for i in range(0, len(blocks), 8):
        x = blocks[i: i + 8].to(device)
        logits = model(input_ids=x).logits.float()
        total += torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                   reduction="sum").item()
        count += x[:, 1:].numel()
    return math.exp(total / count)


@torch.inference_mode()
def decode_tps(model, tok, device, new: int, repeats: int = 3) -> float:
    ids = tok("It is a truth universally acknowledged, that", return_tensors="pt")["input_ids"].to(device)
    model.generate(input_ids=ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = model.generate(input_ids=ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        sync(device)
        times.append(time.perf_counter() - t)
    return (out.shape[1] - ids.shape[1]) / statistics.median(times)


@torch.inference_mode()
def prefill_tps(model, blocks, device, repeats: int = 5) -> float:
    x = blocks[:8, :256].to(device)
    model(input_ids=x)
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        model(input_ids=x)
        sync(device)
        times.append(time.perf_counter() - t)
    return x.numel() / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--methods", default="bf16,weight_only_int8,weight_only_int4:32,weight_only_int4:64",
                    help="comma-separated; weight_only_int4:G[:hqq][:e4gN] sets the group size G (default --group-size) and the "
                    "scale/zero choice (min-max, or HQQ) and an int4 embedding in groups of N")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--compile", action="store_true", help="also time decode with a static KV cache (compiled by "
                    "generate on CUDA)")
    ap.add_argument("--group-size", type=int, default=128)
    args = ap.parse_args()
    raw = trainopt.load_recipe("lm-int8").model_dump(mode="json")
    raw["model"]["path"] = args.model
    raw["stages"] = raw["stages"][:1]
    recipe, device, texts = validate(raw)
    path = asset_path("smollm2") if str(recipe.model.path).startswith("builtin:") else recipe.model.path
    base, tok, _ = load_saved(path, task="causal_lm")
    blocks = tokenize(texts, tok, recipe).test.blocks
    rows = []
    for variant in args.methods.split(","):
        method, *opts = variant.split(":")
        group = next((o for o in opts if o.isdigit()), "")
        qparams = "hqq" if "hqq" in opts else "minmax"
        emb = next((int(o[3:]) for o in opts if o.startswith("e4g")), None)  # int4 embedding in groups of N
        model = copy.deepcopy(base).to(device, torch.bfloat16).eval()
        info = {}
        if method != "bf16":
            info = weight_only.apply(model, method, int(group or args.group_size), True, [], device, qparams,
                                     4 if emb else 8, emb or 32)
        row = {"variant": variant, "weight_bytes": weight_only.weight_bytes(model),
               "linears_kept_float": info.get("linear_modules_kept_float", 0),
               "perplexity": round(perplexity(model, blocks, device), 3),
               "decode_tok_s_b1": round(decode_tps(model, tok, device, args.new), 1),
               "prefill_tok_s_b8x256": round(prefill_tps(model, blocks, device), 1)}
        if args.compile:  # a static KV cache: `generate` then compiles the decode step itself on CUDA (transformers'
            # auto-compile, CUDA graphs included); compiling the forward by hand on top of it made the graphs overwrite
            # outputs that generate still held (torch 2.11, transformers 5.17)
            try:
                model.generation_config.cache_implementation = "static"
                row["decode_tok_s_b1_compiled"] = round(decode_tps(model, tok, device, args.new), 1)
            except Exception as e:  # recorded, not fatal: the eager figures stand
                row["decode_tok_s_b1_compiled"] = f"failed: {type(e).__name__}: {str(e)[:200]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model
    ref = rows[0]
    hw = measure.hardware_info(device)
    print(f"\nSmolLM2-135M on {hw.get('name')}, torch {hw['torch']}; perplexity on {len(blocks)} held-out blocks")
    print("| variant | weight MB | vs bf16 | Linears left float | perplexity | Δ | decode tok/s b1 | prefill tok/s | "
          "compiled decode |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['weight_bytes'] / 1e6:.1f} | {ref['weight_bytes'] / r['weight_bytes']:.2f}x | "
              f"{r['linears_kept_float']} | "
              f"{r['perplexity']} | {r['perplexity'] / ref['perplexity'] - 1:+.1%} | {r['decode_tok_s_b1']} | "
              f"{r['prefill_tok_s_b8x256']:,.0f} | {r.get('decode_tok_s_b1_compiled', '—')} |")


if __name__ == "__main__":
    main()
