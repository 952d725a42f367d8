"""2:4 sparsity through a direct `torch._cslt_sparse_mm` call per Linear (trainopt.compress.prune.sparse24) vs dense bf16,
on one CUDA GPU — issue 4's ≥ 1.1x target.

    python benchmarks/cslt_direct_gpu.py [--rows 2048,8192,32768] [--cases "bert-base:128:16,64,256;smollm2-135m:2048:1,4,16"]

Part 1, one product per Linear shape of BERT-base and SmolLM2-135M at several token counts, each variant captured
20 times in one CUDA graph and replayed (median of 15 replays, device events), so that host work is out and only
kernels are compared: dense `F.linear` (cuBLAS) vs `_cslt_sparse_mm` with the default algorithm and with the one
`_cslt_sparse_mm_search` picks, and PyTorch's subclass (`to_sparse_semi_structured`) for reference. Relative error
vs the dense product of the same 2:4 weight is checked on fresh inputs.

Part 2, end to end: the randomly initialised model of each shape, every block Linear pruned to 2:4 by magnitude,
bf16, forward through `torch.compile(mode="reduce-overhead")` (graphs) dense vs with `Sparse24Linear`s (searched
algorithms at the largest batch), all-ones masks left out. Same measure code as the prune stage.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

LINEARS = {"bert-base": [(768, 768), (768, 3072), (3072, 768)],
           "smollm2-135m": [(576, 576), (576, 192), (576, 1536), (1536, 576)]}


def graph_ms(fn, reps: int = 20, replays: int = 15) -> float:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / reps)
    return statistics.median(times)


def two_four(w: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 along the input dimension."""
    g = w.reshape(w.shape[0], -1, 4)
    idx = g.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
    return (g * mask).reshape_as(w)


def kernels(rows_list: list[int]) -> list[dict]:
    from torch.sparse import to_sparse_semi_structured

    from trainopt.compress.prune.sparse24 import Sparse24Linear, search_alg

    out = []
    torch.manual_seed(0)
    for model, shapes in LINEARS.items():
        for k, n in shapes:
            lin = torch.nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
            with torch.no_grad():
                lin.weight.copy_(two_four(lin.weight))
            direct = Sparse24Linear(lin)
            sub = to_sparse_semi_structured(lin.weight.detach())
            for m in rows_list:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                row = {"model": model, "rows": m, "in": k, "out": n}
                row["dense_ms"] = graph_ms(lambda x=x, lin=lin, direct=direct, sub=sub: F.linear(x, lin.weight, lin.bias))
                direct.alg_id = 0
                row["cslt_default_ms"] = graph_ms(lambda x=x, lin=lin, direct=direct, sub=sub: direct(x))
                alg = search_alg(direct, m)
                row["searched_alg"] = alg
                direct.alg_id = alg
                row["cslt_searched_ms"] = graph_ms(lambda x=x, lin=lin, direct=direct, sub=sub: direct(x))
                try:
                    row["subclass_ms"] = graph_ms(lambda x=x, lin=lin, direct=direct, sub=sub: F.linear(x, sub, lin.bias))
                except Exception as e:  # noqa: BLE001
                    row["subclass_error"] = str(e).splitlines()[0][:120]
                x2 = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                ref = F.linear(x2.float(), lin.weight.float(), lin.bias.float())
                row["rel_err"] = float((direct(x2).float() - ref).norm() / ref.norm())
                best = min(row["cslt_default_ms"], row["cslt_searched_ms"])
                row["speedup_best"] = round(row["dense_ms"] / best, 3)
                out.append(row)
                print(json.dumps(row), flush=True)
    return out


def end_to_end(cases: str, measure_kw: dict) -> list[dict]:
    from sparse24_gpu import build

    from trainopt import measure as tm
    from trainopt.compress.prune.masks import targets
    from trainopt.compress.prune.sparse24 import convert
    from trainopt.recipe import PruneStage

    rows = []
    for case in cases.split(";"):
        name, seq, batch_text = case.split(":")
        seq, batches = int(seq), [int(b) for b in batch_text.split(",")]
        model, vocab = build(name, seq)
        model = model.cuda().to(torch.bfloat16).eval()
        modules = targets(model, PruneStage(kind="prune", pattern="2:4"))
        with torch.no_grad():
            for _, m in modules:
                m.weight.copy_(two_four(m.weight))
        inputs = {b: {"input_ids": torch.randint(1000, vocab, (b, seq))} for b in batches}
        row = {"shape": name, "seq": seq}
        with torch.inference_mode():
            dense = tm.measure_compiled_latency(model, inputs, torch.device("cuda"), **measure_kw)
            torch._dynamo.reset()
            x = {k: v.cuda() for k, v in inputs[max(batches)].items()}
            ref = model(**x).logits.float()
        sparse_model = copy.deepcopy(model)
        row["conversion"] = convert(sparse_model, {n for n, _ in modules}, search_rows=max(batches) * seq)
        with torch.inference_mode():
            out = sparse_model(**x).logits.float()
            row["rel_err_logits"] = float((out - ref).norm() / ref.norm())
            try:
                sparse = tm.measure_compiled_latency(sparse_model, inputs, torch.device("cuda"), **measure_kw)
            except Exception as e:  # noqa: BLE001 — a compiler failure is a result
                sparse, row["compiled_error"] = {}, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            torch._dynamo.reset()
            try:  # eager too: the direct call still has host work in every call (plan set-up, likely)
                eager_d = tm.measure_latency(model, inputs, torch.device("cuda"), measure_kw["warmup"],
                                             measure_kw["repeats"], measure_kw["max_seconds"]).to_json()
                eager_s = tm.measure_latency(sparse_model, inputs, torch.device("cuda"), measure_kw["warmup"],
                                             measure_kw["repeats"], measure_kw["max_seconds"]).to_json()
            except Exception as e:  # noqa: BLE001
                eager_d, eager_s, row["eager_error"] = {}, {}, str(e)[:200]
        for b in batches:
            k = f"compiled_latency_ms_b{b}_p50"
            e = f"latency_ms_b{b}_p50"
            row[f"b{b}"] = {"dense_compiled": dense.get(k), "sparse_compiled": sparse.get(k),
                            "dense_eager": eager_d.get(e), "sparse_eager": eager_s.get(e)}
            if dense.get(k) and sparse.get(k):
                row[f"b{b}"]["speedup_compiled"] = round(dense[k] / sparse[k], 3)
            if eager_d.get(e) and eager_s.get(e):
                row[f"b{b}"]["speedup_eager"] = round(eager_d[e] / eager_s[e], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model, sparse_model
        torch.cuda.empty_cache()
    return rows


def bert_pair(search_rows: int):
    """The BERT-base-shaped classifier (random init, bf16, CUDA) with every encoder Linear 2:4 by magnitude, and a
    copy with those Linears as `Sparse24Linear`s on the algorithms searched at `search_rows` rows."""
    from sparse24_gpu import build

    from trainopt.compress.prune.masks import targets
    from trainopt.compress.prune.sparse24 import convert
    from trainopt.recipe import PruneStage

    model, vocab = build("bert-base", 128)
    model = model.cuda().to(torch.bfloat16).eval()
    modules = targets(model, PruneStage(kind="prune", pattern="2:4"))
    with torch.no_grad():
        for _, m in modules:
            m.weight.copy_(two_four(m.weight))
    sparse_model = copy.deepcopy(model)
    convert(sparse_model, {n for n, _ in modules}, search_rows=search_rows)
    return model, sparse_model, vocab


def mask_matrix(batches: list[int], measure_kw: dict) -> list[dict]:
    """BERT-base, dense vs 2:4 direct, each timed eager, compiled (reduce-overhead) and hand-captured, with and
    without an all-ones attention mask in the inputs: which path keeps a fused attention kernel decides the best
    dense time, the honest baseline."""
    import inspect

    import transformers

    from trainopt import measure as tm

    try:
        from transformers import masking_utils
        print("transformers", transformers.__version__, inspect.getsource(masking_utils._ignore_bidirectional_mask_sdpa),
              flush=True)
    except Exception as e:  # noqa: BLE001
        print("no mask source:", e)
    model, sparse_model, vocab = bert_pair(max(batches) * 128)
    ids = {b: torch.randint(1000, vocab, (b, 128)) for b in batches}
    dev = torch.device("cuda")
    out = []
    for mask in (False, True):
        inputs = {b: {"input_ids": i, **({"attention_mask": torch.ones_like(i)} if mask else {})}
                  for b, i in ids.items()}
        for side, m in (("dense", model), ("sparse", sparse_model)):
            row = {"mask": mask, "side": side}
            row.update(tm.measure_latency(m, inputs, dev, measure_kw["warmup"], measure_kw["repeats"],
                                          measure_kw["max_seconds"]).to_json())
            for fn in (tm.measure_compiled_latency, tm.measure_graphed_latency):
                try:
                    row.update(fn(m, inputs, dev, **measure_kw))
                except Exception as e:  # noqa: BLE001
                    row[f"{fn.__name__}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"
                torch._dynamo.reset()
            row = {k: v for k, v in row.items() if "p50" in k or "error" in k or k in ("mask", "side")}
            out.append(row)
            print(json.dumps(row), flush=True)
    print("\n| mask in inputs | batch | dense ms eager / compiled / graph | 2:4 ms eager / compiled / graph | "
          "best 2:4 vs best dense |")
    print("|---|---|---|---|---|")
    for mask in (False, True):
        d = next(r for r in out if r["mask"] == mask and r["side"] == "dense")
        s = next(r for r in out if r["mask"] == mask and r["side"] == "sparse")
        for b in batches:
            keys = [f"latency_ms_b{b}_p50", f"compiled_latency_ms_b{b}_p50", f"graph_latency_ms_b{b}_p50"]
            best = min(v for r in out for k in keys if (v := r.get(k)) and r["side"] == "dense")
            sbest = min((s[k] for k in keys if s.get(k)), default=None)
            print(f"| {mask} | {b} | {' / '.join(str(d.get(k, '—')) for k in keys)} | "
                  f"{' / '.join(str(s.get(k, '—')) for k in keys)} | "
                  f"{(best / sbest if sbest else 0):.3f}x (dense best {best}) |")
    return out


def interleaved(batches: list[int], rounds: int) -> list[dict]:
    """BERT-base dense vs 2:4 direct, both compiled once per batch (reduce-overhead, all-ones mask in the inputs —
    the fastest dense mode in the mask matrix), then timed in alternation `rounds` times: the ratio's spread."""

    from trainopt.measure import percentile, time_call

    model, sparse_model, vocab = bert_pair(max(batches) * 128)
    dev = torch.device("cuda")
    rows = []
    with torch.inference_mode():
        for b in batches:
            ids = torch.randint(1000, vocab, (b, 128), device=dev)
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            calls = {}
            for side, m in (("dense", model), ("sparse", sparse_model)):
                compiled = torch.compile(m, mode="reduce-overhead", dynamic=False)

                def call(compiled=compiled, batch=batch):
                    torch.compiler.cudagraph_mark_step_begin()
                    compiled(**batch)

                for _ in range(3):
                    call()
                calls[side] = call
            times = {"dense": [], "sparse": []}
            for _ in range(rounds):
                for side in ("dense", "sparse"):
                    times[side].append(percentile(time_call(calls[side], dev, 5, 50, 4), 0.5))
            row = {"batch": b, **{f"{k}_ms": [round(t, 3) for t in v] for k, v in times.items()},
                   "ratios": [round(d / s, 3) for d, s in zip(times["dense"], times["sparse"])]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            torch._dynamo.reset()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="2048,8192,32768")
    ap.add_argument("--cases", default="bert-base:128:16,64,256;smollm2-135m:2048:1,4,16")
    ap.add_argument("--skip-kernels", action="store_true")
    ap.add_argument("--json", default=None, help="write all rows here")
    ap.add_argument("--mask-matrix", default=None, help="batches (e.g. 64,256,512): only the BERT-base mask matrix")
    ap.add_argument("--interleaved", default=None, help="batches: dense vs 2:4 compiled, timed in alternation")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.interleaved:
        rows = interleaved([int(b) for b in args.interleaved.split(",")], args.rounds)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
    if args.mask_matrix:
        rows = mask_matrix([int(b) for b in args.mask_matrix.split(",")], {"warmup": 5, "repeats": 30,
                                                                             "max_seconds": 4})
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
    print(f"GPU: {torch.cuda.get_device_name()} torch {torch.__version__} cuSPARSELt "
          f"{torch.backends.cusparselt.version()}", flush=True)
    k = [] if args.skip_kernels else kernels([int(r) for r in args.rows.split(",")])
    e2e = end_to_end(args.cases, {"warmup": 5, "repeats": 50, "max_seconds": 5}) if args.cases else []
    if args.json:
        Path(args.json).write_text(json.dumps({"kernels": k, "end_to_end": e2e}, indent=1))
    print("\n| model | rows × in → out | dense ms | cuSPARSELt direct, default / searched alg (id) | subclass ms | "
          "best speedup | rel. err |")
    print("|---|---|---|---|---|---|---|")
    for r in k:
        print(f"| {r['model']} | {r['rows']} × {r['in']} → {r['out']} | {r['dense_ms']:.4f} | "
              f"{r['cslt_default_ms']:.4f} / {r['cslt_searched_ms']:.4f} ({r['searched_alg']}) | "
              f"{r.get('subclass_ms', float('nan')):.4f} | {r['speedup_best']:.2f}x | {r['rel_err']:.1e} |")
    print("\n| model | batch × seq | dense ms compiled / eager | 2:4 direct ms compiled / eager | speedup compiled / "
          "eager | rel. err logits |")
    print("|---|---|---|---|---|---|")
    for r in e2e:
        for key, v in r.items():
            if not key.startswith("b") or not isinstance(v, dict):
                continue
            print(f"| {r['shape']} | {key[1:]} × {r['seq']} | {v['dense_compiled']} / {v['dense_eager']} | "
                  f"{v['sparse_compiled']} / {v['sparse_eager']} | {v.get('speedup_compiled', '—')}x / "
                  f"{v.get('speedup_eager', '—')}x | {r['rel_err_logits']:.1e} |")
        if "compiled_error" in r:
            print(f"  ({r['shape']}: compiled error: {r['compiled_error']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
