"""2:4 semi-structured sparsity on one CUDA GPU: the prune stage's kernel timing for several model shapes and
token counts, and the stage end to end.

    python benchmarks/sparse24_gpu.py [--cases "bert-base:128:16,64,256;smollm2-135m:2048:1,4,16"] [--no-e2e]

For BERT classifiers shaped like MiniLM-L6 / BERT-base / BERT-large and SmolLM2-135M's decoder (prefill), randomly
initialised (speed does not depend on the values; random, not zeros): prune every block Linear to 2:4 by magnitude
with trainopt's masks, then `trainopt.compress.prune.time_sparse_kernels` times the same model dense and with its
2:4 Linears on cuSPARSELt (`compress.sparse24.Sparse24Linear`; PyTorch's semi-structured subclass where cuSPARSELt is
missing), both bf16, eager, replayed from a CUDA graph and compiled, on random token ids — exactly what the prune
stage does on CUDA. Also checks that the sparse model computes what the dense 2:4 model computes (relative error of
the logits). Last, runs a small recipe (train → 2:4 prune) through `trainopt.run` on CUDA.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

SHAPES = {"minilm-l6": (384, 6, 12, 1536), "bert-base": (768, 12, 12, 3072), "bert-large": (1024, 24, 16, 4096)}


def build(name: str, seq: int):
    """A randomly initialised model of the named shape (BERT classifiers, or SmolLM2-135M's decoder)."""
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if name == "smollm2-135m":
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=max(2048, seq),
                          tie_word_embeddings=True)
        return LlamaForCausalLM(cfg), cfg.vocab_size
    hidden, layers, heads, inter = SHAPES[name]
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=inter, max_position_embeddings=max(512, seq))
    return BertForSequenceClassification(cfg), cfg.vocab_size


def bench_shape(name, seq, batches, measure, search: str = "both"):
    from trainopt.compress.prune import attach_masks, bake, masks_from_scores, oriented, targets, \
        time_sparse_kernels
    from trainopt.recipe import PruneStage

    model, vocab = build(name, seq)
    model = model.cuda().eval()
    modules = targets(model, PruneStage(kind="prune", pattern="2:4"))
    scores = [oriented(m, m.weight.detach().abs().float()) for _, m in modules]
    attach_masks(modules, masks_from_scores(scores, 0.5, "2:4", "global"))
    bake(modules)
    inputs = {b: {"input_ids": torch.randint(1000, vocab, (b, seq)),
                  "attention_mask": torch.ones(b, seq, dtype=torch.long)} for b in batches}
    ctx = SimpleNamespace(device=torch.device("cuda"), recipe=SimpleNamespace(measure=measure),
                          extras={"measure_inputs": inputs})
    kernels = time_sparse_kernels(model, modules, ctx, search_alg=search != "off")
    if search == "both":  # the same, each layer on cuSPARSELt's default algorithm
        plain = time_sparse_kernels(model, modules, ctx, search_alg=False)
        kernels.update({f"default_alg_{k}": v for k, v in plain.items() if "speedup" in k or k.startswith("sparse_")})
    # Same function? The dense 2:4 model in bf16 vs the converted one (the stage's conversion), on fresh inputs.
    from trainopt.compress.prune import sparse24

    dense = model.to(torch.bfloat16)
    x = {k: v.cuda() for k, v in inputs[max(batches)].items()}
    with torch.no_grad():
        ref = dense(**x).logits.float()
        if sparse24.available(torch.device("cuda")):
            sparse24.convert(dense, {n for n, _ in modules})
        else:
            from torch.sparse import to_sparse_semi_structured

            for _, m in modules:
                m.weight = torch.nn.Parameter(to_sparse_semi_structured(m.weight.detach()), requires_grad=False)
        out = dense(**x).logits.float()
    kernels["rel_err_logits"] = float((out - ref).norm() / ref.norm())
    kernels["shape"], kernels["seq"] = name, seq
    return kernels


def end_to_end(out: Path) -> dict:
    import trainopt

    from gpu_smoke import write_data  # the same synthetic reviews as the GPU smoke test

    data, _ = write_data(out)
    recipe = {"name": "sparse24", "task": "classification",
              "model": {"config": {"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 4,
                                   "num_attention_heads": 12, "intermediate_size": 3072,
                                   "max_position_embeddings": 128},
                        "train_tokenizer": {"vocab_size": 2000}},
              "data": {"source": str(data), "max_length": 64},
              "stages": [{"kind": "train", "name": "dense", "max_steps": 60, "batch_size": 32, "precision": "bf16",
                          "optimizer": {"lr": 5e-4}},
                         {"kind": "prune", "name": "two-four", "method": "magnitude", "pattern": "2:4",
                          "train": {"max_steps": 30, "batch_size": 32, "precision": "bf16",
                                    "optimizer": {"lr": 2e-4}}}],
              "run": {"device": "cuda", "progress": False},
              "measure": {"batch_sizes": [1, 256], "repeats": 20, "max_seconds": 3}}
    report = trainopt.run(recipe, out=out / "run", overwrite=True)
    st = report["stages"][-1]
    return {"effect": st["effect"], "accuracy_dense": report["stages"][0]["quality"]["accuracy"],
            "accuracy_2of4": st["quality"]["accuracy"], "achieved": st["pruning"]["achieved_sparsity"],
            "sparse_kernels": st["pruning"]["sparse_kernels"]}


def main() -> int:
    from trainopt.recipe import MeasureSpec

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="bert-base:128:16,64,256;smollm2-135m:2048:1,4,16;minilm-l6:128:32,256",
                    help="name:seq:batches;… (names: minilm-l6, bert-base, bert-large, smollm2-135m)")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end trainopt.run")
    ap.add_argument("--search", default="both", choices=["on", "off", "both"],
                    help="cuSPARSELt algorithm search per layer (both: also time the default algorithm)")
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="sparse24-"))
    args = ap.parse_args()
    print(f"GPU: {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    rows = []
    for case in args.cases.split(";"):
        name, seq, batch_text = case.split(":")
        batches = [int(b) for b in batch_text.split(",")]
        measure = MeasureSpec(batch_sizes=batches, warmup=5, repeats=50, max_seconds=5)
        try:
            row = bench_shape(name, int(seq), batches, measure, args.search)
        except Exception as e:  # report and go on
            row = {"shape": name, "seq": int(seq), "error": f"{type(e).__name__}: {str(e)[:300]}"}
        row["batches"] = batches
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not args.no_e2e:
        try:
            e2e = end_to_end(Path(args.out))
        except Exception as e:
            e2e = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print("end-to-end:", json.dumps(e2e), flush=True)
    print("\n| model | batch × seq | dense ms eager / graph / compiled | 2:4 sparse ms eager / graph / compiled | "
          "speedup eager / graph / compiled | fastest 2:4 vs fastest dense | rel. err logits | default alg (graph) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r or not r.get("measured"):
            print(f"| {r['shape']} | — | — | — | {r.get('error') or r.get('reason')} | — | — | — |")
            continue
        for b in r["batches"]:
            def cell(side, b=b, r=r):
                return " / ".join(str(r.get(f"{side}_{mode}latency_ms_b{b}_p50", "—"))
                                  for mode in ("", "graph_", "compiled_"))

            alg = r.get(f"default_alg_graph_speedup_b{b}")
            alg = f"{alg}x" if alg is not None else "—"
            speed = " / ".join(f"{r[k]:.2f}x" if k in r else "—"
                               for k in (f"speedup_b{b}", f"graph_speedup_b{b}", f"compiled_speedup_b{b}"))
            best = r.get(f"best_vs_best_speedup_b{b}")
            best = f"**{best:.2f}x**" if best else "—"
            print(f"| {r['shape']} | {b} × {r['seq']} | {cell('dense')} | {cell('sparse')} | {speed} | {best} | "
                  f"{r['rel_err_logits']:.1e} | {alg} |")
        for side in ("dense", "sparse"):
            for err in ("graph_error", "compiled_error"):
                if f"{side}_{err}" in r:
                    print(f"  ({r['shape']}: {side} {err.replace('_', ' ')}: {r[f'{side}_{err}']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
