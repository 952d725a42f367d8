"""2:4 semi-structured sparsity on one CUDA GPU: the prune stage's kernel timing at three model sizes, and the
stage end to end.

    python benchmarks/sparse24_gpu.py [--seq 128] [--batches 1,32,256]

For BERT encoders shaped like MiniLM-L6 (384 wide), BERT-base (768) and BERT-large (1024), randomly initialised
(speed does not depend on the values; random, not zeros): prune every block Linear to 2:4 by magnitude with
trainopt's masks, then `trainopt.compress.prune.time_sparse_kernels` times the same model dense and with
PyTorch's semi-structured sparse weights, both bf16, on random token ids — exactly what the prune stage does on
CUDA. Also checks that the sparse model computes what the dense 2:4 model computes (relative error of the
logits). Last, runs a small recipe (train → 2:4 prune) through `trainopt.run` on CUDA.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

SHAPES = {"minilm-l6": (384, 6, 12, 1536), "bert-base": (768, 12, 12, 3072), "bert-large": (1024, 24, 16, 4096)}


def bench_shape(name, shape, seq, batches, measure):
    from transformers import BertConfig, BertForSequenceClassification

    from trainopt.compress.prune import attach_masks, bake, masks_from_scores, oriented, targets, \
        time_sparse_kernels
    from trainopt.recipe import PruneStage

    hidden, layers, heads, inter = shape
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=inter, max_position_embeddings=max(512, seq))
    model = BertForSequenceClassification(cfg).cuda().eval()
    modules = targets(model, PruneStage(kind="prune", pattern="2:4"))
    scores = [oriented(m, m.weight.detach().abs().float()) for _, m in modules]
    attach_masks(modules, masks_from_scores(scores, 0.5, "2:4", "global"))
    bake(modules)
    inputs = {b: {"input_ids": torch.randint(1000, cfg.vocab_size, (b, seq)),
                  "attention_mask": torch.ones(b, seq, dtype=torch.long)} for b in batches}
    ctx = SimpleNamespace(device=torch.device("cuda"), recipe=SimpleNamespace(measure=measure),
                          extras={"measure_inputs": inputs})
    kernels = time_sparse_kernels(model, modules, ctx)
    # Same function? The dense 2:4 model in bf16 vs the converted one, on fresh inputs.
    from torch.sparse import to_sparse_semi_structured

    dense = model.to(torch.bfloat16)
    x = {k: v.cuda() for k, v in inputs[max(batches)].items()}
    with torch.no_grad():
        ref = dense(**x).logits.float()
        for _, m in modules:
            m.weight = torch.nn.Parameter(to_sparse_semi_structured(m.weight.detach()), requires_grad=False)
        out = dense(**x).logits.float()
    kernels["rel_err_logits"] = float((out - ref).norm() / ref.norm())
    kernels["shape"] = name
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
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batches", default="1,32,256")
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="sparse24-"))
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    measure = MeasureSpec(batch_sizes=batches, warmup=5, repeats=50, max_seconds=5)
    print(f"GPU: {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    rows = []
    for name, shape in SHAPES.items():
        try:
            rows.append(bench_shape(name, shape, args.seq, batches, measure))
        except Exception as e:  # report and go on
            rows.append({"shape": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
        print(json.dumps(rows[-1]), flush=True)
    try:
        e2e = end_to_end(Path(args.out))
    except Exception as e:
        e2e = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    print("end-to-end:", json.dumps(e2e), flush=True)
    print("\n| model | batch × seq | dense bf16 ms | 2:4 sparse bf16 ms | speedup | rel. err logits |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r or not r.get("measured"):
            print(f"| {r['shape']} | — | — | — | {r.get('error') or r.get('reason')} | — |")
            continue
        for b in batches:
            print(f"| {r['shape']} | {b} × {args.seq} | {r[f'dense_latency_ms_b{b}_p50']:.3f} | "
                  f"{r[f'sparse_latency_ms_b{b}_p50']:.3f} | {r[f'speedup_b{b}']:.2f}x | {r['rel_err_logits']:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
