"""Why are CUDA-graph replays of a bf16 model slower than eager at large token counts? (issue 4's 2:4 timing)

`benchmarks/sparse24_gpu.py` found BERT-base at 256 × 128 tokens taking 36 ms replayed from a CUDA graph and 14 ms
eagerly, with the graph captured on its own stream or on the warmed-up one alike. This times one bf16 GEMM of
BERT-base's FFN shape (and the whole dense model) eagerly and replayed from a graph, under PyTorch's default cuBLAS
settings and under each named alternative, each in a fresh process (the settings must precede CUDA's start):

    python benchmarks/graph_gemm_probe.py

Measured (session 6, H200, torch 2.11): the GEMM alone is as fast replayed as eager under every setting, the
model is not (34.8 vs 13.4 ms) — so the last setting pins each attention backend in turn (not yet run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SETTINGS = {
    "default": {},
    "CUBLAS_WORKSPACE_CONFIG=:4096:8": {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"},
    "TORCH_CUBLASLT_UNIFIED_WORKSPACE=1": {"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "1"},
    "blas=cublas (not cublasLt)": {"PROBE_BLAS": "cublas"},
    "default, each SDPA backend pinned": {"PROBE_SDPA_BACKENDS": "1"},
}


def child() -> None:
    import torch

    if os.environ.get("PROBE_BLAS"):
        torch.backends.cuda.preferred_blas_library(os.environ["PROBE_BLAS"])
    dev = torch.device("cuda")

    def timed(fn, n=30):
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / n

    def graphed(fn):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=side):
            fn()
        return g.replay

    out = {}
    for rows in (2048, 32768):
        x = torch.randn(rows, 768, device=dev, dtype=torch.bfloat16)
        w = torch.randn(3072, 768, device=dev, dtype=torch.bfloat16)

        def mm(x=x, w=w):
            return torch.nn.functional.linear(x, w)

        out[f"gemm_{rows}x768x3072_eager_ms"] = round(timed(mm), 4)
        out[f"gemm_{rows}x768x3072_graph_ms"] = round(timed(graphed(mm)), 4)
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig()).to(dev, torch.bfloat16).eval()
    ids = torch.randint(1000, 30000, (256, 128), device=dev)
    with torch.inference_mode():
        out["bert_base_256x128_eager_ms"] = round(timed(lambda: model(input_ids=ids), 10), 3)
        out["bert_base_256x128_graph_ms"] = round(timed(graphed(lambda: model(input_ids=ids)), 10), 3)
        if os.environ.get("PROBE_SDPA_BACKENDS"):  # the attention kernel pinned, eager and captured alike
            from torch.nn.attention import SDPBackend, sdpa_kernel

            for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
                try:
                    with sdpa_kernel([getattr(SDPBackend, name)]):
                        out[f"bert_{name.lower()}_eager_ms"] = round(timed(lambda: model(input_ids=ids), 10), 3)
                        out[f"bert_{name.lower()}_graph_ms"] = round(
                            timed(graphed(lambda: model(input_ids=ids)), 10), 3)
                except RuntimeError as e:
                    out[f"bert_{name.lower()}"] = f"failed: {str(e).splitlines()[0][:120]}"
    print(json.dumps(out))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child()
        return
    import torch

    print(f"torch {torch.__version__}", flush=True)
    for name, env in SETTINGS.items():
        p = subprocess.run([sys.executable, __file__, "--child"], env={**os.environ, **env}, capture_output=True,
                           text=True)
        line = p.stdout.strip().splitlines()[-1] if p.returncode == 0 and p.stdout.strip() else \
            f"failed: {p.stderr.strip().splitlines()[-1][:300] if p.stderr.strip() else p.returncode}"
        print(f"{name}: {line}", flush=True)


if __name__ == "__main__":
    main()
