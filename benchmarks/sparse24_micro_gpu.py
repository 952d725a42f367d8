"""One matrix product, dense vs 2:4 semi-structured sparse (bf16), on one CUDA GPU.

    python benchmarks/sparse24_micro_gpu.py

Shows what a single `F.linear` costs with PyTorch's `to_sparse_semi_structured` weight next to the dense one,
for a few shapes (2-D and 3-D inputs). On sm_90 PyTorch uses cuSPARSELt; its CUTLASS path runs on sm_8x only.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.sparse import to_sparse_semi_structured

SHAPES = [(32768, 1024, 4096), (32768, 4096, 1024), (4096, 768, 3072), (128, 768, 3072)]  # (tokens, in, out)


def timed(fn, *args, n: int = 30) -> float:
    for _ in range(5):
        fn(*args)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn(*args)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n * 1000


def main() -> None:
    torch.manual_seed(0)
    for m, k, n in SHAPES:
        mask = torch.tensor([1, 1, 0, 0], device="cuda", dtype=torch.bool).tile(n, k // 4)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * mask
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        ws = to_sparse_semi_structured(w)
        x3 = x.view(32, m // 32, k)
        dense, sparse, sparse3 = timed(F.linear, x, w), timed(F.linear, x, ws), timed(F.linear, x3, ws)
        err = float((F.linear(x, ws).float() - F.linear(x, w).float()).norm() / F.linear(x, w).float().norm())
        print(f"{type(ws).__name__} tokens={m} in={k} out={n}: dense {dense:.3f} ms, sparse 2-D {sparse:.3f} ms, "
              f"sparse 3-D {sparse3:.3f} ms, speedup {dense / sparse:.2f}x, rel. err {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
