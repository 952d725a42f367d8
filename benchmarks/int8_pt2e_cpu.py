"""Probe: int8 through PT2E (torch.export + torchao's X86InductorQuantizer + torch.compile with freezing) against
the eager fp32 model and fp32 compiled — does another int8 path beat `quantized::linear_dynamic` on this CPU?

    python benchmarks/int8_pt2e_cpu.py runs/quickstart/stages/finetune/model [--static]

Batch 32 of the first test reviews padded to 128 (export needs one shape); median of 8 calls after 2 warm-ups;
`agree` = fraction of the 32 predictions equal to fp32's. Results: benchmarks/RESULTS.md (session 8).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from trainopt.assets import cache_dir
from trainopt.artifacts import load_saved


class Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, mask):
        return self.model(input_ids=ids, attention_mask=mask).logits


def median_ms(fn, args, n: int = 8) -> float:
    with torch.no_grad():
        for _ in range(2):
            fn(*args)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - start)
    return round(sorted(times)[n // 2] * 1000, 1)


def main() -> None:
    from torch._inductor import config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--static", action="store_true", help="static activation scales (calibrated on the batch)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = [json.loads(line) for line in open(cache_dir() / "data" / "fine_foods" / "test.jsonl")][:32]
    model, tok, _ = load_saved(a.model)
    batch = tok([r["review"].replace("<br />", " ") for r in rows], truncation=True, max_length=128,
                padding="max_length", return_tensors="pt")
    args = (batch["input_ids"], batch["attention_mask"])
    fp32 = Logits(model).eval()
    eager = median_ms(fp32, args)
    config.freezing = True
    with torch.no_grad():
        graph = torch.export.export(fp32, args).module()
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_dynamic=not a.static))
        prepared = prepare_pt2e(graph, quantizer)
        prepared(*args)  # calibration
        int8 = torch.compile(convert_pt2e(prepared))
        int8(*args)
        fp32_compiled = torch.compile(copy.deepcopy(fp32))
        fp32_compiled(*args)
        agree = (fp32(*args).argmax(-1) == int8(*args).argmax(-1)).float().mean().item()
    q_ms, c_ms = median_ms(int8, args), median_ms(fp32_compiled, args)
    print(f"fp32 eager {eager} ms | fp32 compiled {c_ms} ms | PT2E {'static' if a.static else 'dynamic'} int8 "
          f"compiled {q_ms} ms ({eager / q_ms:.2f}x eager fp32) | agree {agree:.3f}")


if __name__ == "__main__":
    main()
