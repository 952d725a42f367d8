"""Which ONNX graph of an encoder runs fastest in onnxruntime once quantized? (issue 26; export/onnx.py's choices)

    python benchmarks/onnx_variants_cpu.py RUN_DIR/stages/student/model

The model exported four ways — the 0/1 padding mask as the model takes it (transformers rebuilds the attention mask
inside the graph) or the additive 4-D float mask; SDPA or eager attention — each as float and as onnxruntime's dynamic
int8 of the unfused graph, plus int8 of onnxruntime's fused graph (LayerNorm/GELU fusions) for the additive-mask ones.
32 random token rows of 128 (rows 6–32 padded after 100) and one row of 60; median of 10 calls after one warm-up, one
model at a time in this process (a screening run: the interleaved comparison with trainopt's int8 is export_cpu.py);
the largest logit difference from the PyTorch model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from trainopt.artifacts import load_saved
from trainopt.export import onnx as O


class _Graph(torch.nn.Module):
    def __init__(self, model, additive: bool):
        super().__init__()
        self.model, self.additive = model, additive

    def forward(self, input_ids, attention_mask):
        if self.additive:
            attention_mask = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _median_ms(fn, n: int) -> float:
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(sorted(times)[n // 2] * 1000, 1)


def main() -> None:
    import contextlib
    import io
    import warnings

    from torch.export import Dim

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--out", default="onnx-variants")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    model, _, _ = load_saved(Path(args.model), "classification")
    torch.manual_seed(0)
    ids = torch.randint(1000, 20000, (32, 128))
    mask = torch.ones_like(ids)
    mask[5:, 100:] = 0
    with torch.inference_mode():
        ref = model(input_ids=ids, attention_mask=mask).logits
    batch, seq = Dim("batch", min=1, max=4096), Dim("sequence", min=2, max=65536)
    print("| graph | float b32 ms | int8 b32 ms | int8 b1 ms | int8 max logit diff |")
    print("|---|---|---|---|---|")
    for additive in (False, True):
        for attention in ("sdpa", "eager"):
            model.set_attn_implementation(attention)
            name = f"{'additive' if additive else '0/1'} mask, {attention}"
            raw = out / f"{int(additive)}-{attention}.onnx"
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(_Graph(model, additive).eval(), (ids[:4, :16], mask[:4, :16]), str(raw),
                                  input_names=["input_ids", "attention_mask"], output_names=["logits"],
                                  opset_version=18, dynamo=True, external_data=False,
                                  dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
            graphs = [(name, raw)]
            if additive:
                fused = out / f"{int(additive)}-{attention}-fused.onnx"
                O.optimize(raw, fused, "bert")
                graphs.append((name + ", fused before int8", fused))
            for label, graph in graphs:
                q8 = graph.with_name(graph.stem + "-int8.onnx")
                O.quantize_int8(graph, q8)
                flt, int8 = O.OrtModel(graph, model.config), O.OrtModel(q8, model.config)
                diff = float((int8(input_ids=ids, attention_mask=mask).logits - ref).abs().max())
                print(f"| {label} | {_median_ms(lambda: flt(input_ids=ids, attention_mask=mask), 10)} | "
                      f"{_median_ms(lambda: int8(input_ids=ids, attention_mask=mask), 10)} | "
                      f"{_median_ms(lambda: int8(input_ids=ids[:1, :60], attention_mask=mask[:1, :60]), 30)} | "
                      f"{diff:.3f} |")


if __name__ == "__main__":
    main()
