"""Where the time of a MiniLM forward goes on this CPU, fp32 vs dynamic int8, and what that allows int8 to reach.

    python benchmarks/int8_amdahl_cpu.py runs/quickstart/stages/finetune/model [--threads 2] [--rounds 3]

The quantize stage's own inputs (the first 32 test reviews, padded to the longest), the stage's own conversion
(`trainopt.compress.quantize`: per-channel dynamic int8 Linears, fbgemm/x86). Times both models in alternation
(median of 8 calls per round), then each encoder Linear alone on an input of its shape in the forward (fp32 vs
int8, alternating): the Linears' share f of the fp32 forward and the int8 Linears' speedup s. Amdahl: the whole model can be at most
1 / ((1 − f) + f / s) faster, and reaching a target speedup T needs s ≥ f / (1/T − (1 − f)) from the Linears alone.
Results: benchmarks/RESULTS.md (session 9, issue 6).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--target", type=float, default=1.8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from trainopt.compress.quantize import convert, plan
    from trainopt.data.prepare import load_texts, tokenize
    from trainopt.measure import _cpu_name, cpu_int8_dot, fixed_inputs
    from trainopt.artifacts import load_saved
    from trainopt.recipe import load_recipe

    fp32, tokenizer = load_saved(args.model)[:2]
    fp32.eval()
    recipe = load_recipe("quickstart")
    data = tokenize(load_texts(recipe), tokenizer, recipe)
    batch = fixed_inputs(data.test, "classification", [32], None)[32]
    int8 = convert(copy.deepcopy(fp32), plan(fp32, False, []))
    vnni = cpu_int8_dot() or "none"
    print(f"CPU: {_cpu_name()}, PyTorch capability {torch.backends.cpu.get_cpu_capability()}, "
          f"int8 dot products: {vnni}; threads {args.threads}; batch {tuple(batch['input_ids'].shape)}")

    def median_ms(model, n=8):
        with torch.inference_mode():
            for _ in range(2):
                model(**batch)
            times = []
            for _ in range(n):
                start = time.perf_counter()
                model(**batch)
                times.append(time.perf_counter() - start)
        return sorted(times)[n // 2] * 1000

    ratios = []
    for r in range(args.rounds):
        a, b = median_ms(fp32), median_ms(int8)
        ratios.append(a / b)
        print(f"round {r}: fp32 {a:.1f} ms, int8 {b:.1f} ms, {a / b:.2f}x")
    # The Linears alone, each of the model's Linears called on an input of its own shape (rows = batch × length),
    # fp32 vs its int8 conversion, in alternation — no profiler (its overhead skews small ops).
    rows = batch["input_ids"].numel()
    quantized = dict(int8.named_modules())
    pairs = [(m, quantized[n]) for n, m in fp32.named_modules() if isinstance(m, torch.nn.Linear) and "encoder" in n]
    lin = {"fp32": [], "int8": []}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for side in ("fp32", "int8"):
                total = 0.0
                for m, q in pairs:
                    x = torch.randn(rows, m.in_features)
                    mod = m if side == "fp32" else q
                    for _ in range(2):
                        mod(x)
                    times = []
                    for _ in range(5):
                        start = time.perf_counter()
                        mod(x)
                        times.append(time.perf_counter() - start)
                    total += sorted(times)[2]
                lin[side].append(total * 1000)
    fp32_ms = sorted(median_ms(fp32) for _ in range(args.rounds))[args.rounds // 2]
    lin_fp32, lin_int8 = (sorted(v)[len(v) // 2] for v in (lin["fp32"], lin["int8"]))
    f, s = lin_fp32 / fp32_ms, lin_fp32 / lin_int8
    bound = 1 / ((1 - f) + f / s)
    need = f / (1 / args.target - (1 - f)) if 1 / args.target > 1 - f else float("inf")
    print(f"\nencoder Linears ({len(pairs)}) alone: fp32 {lin_fp32:.1f} ms, int8 {lin_int8:.1f} ms (s = {s:.2f}x); "
          f"fp32 forward {fp32_ms:.1f} ms, so the Linears' share f = {f:.1%}")
    print(f"Amdahl with the measured s: {bound:.2f}x (measured whole-model ratio: "
          f"{sorted(ratios)[len(ratios) // 2]:.2f}x, median of {len(ratios)} rounds); with s = 2: "
          f"{1 / ((1 - f) + f / 2):.2f}x; {args.target}x needs s ≥ {need:.2f}x from the Linears alone")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
