"""Measurement: FLOPs per token, percentiles, fixed latency inputs, size counting."""

from __future__ import annotations

import torch

from trainopt import measure
from trainopt.data.batching import ClassificationSplit
from trainopt.artifacts import count_params


def test_flops_per_token_counts_matmuls_and_attention():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=100, n_layer=2, n_head=2, n_embd=16, n_positions=64)
    model = GPT2LMHeadModel(cfg)
    per_layer = 16 * 48 + 16 * 16 + 16 * 64 + 64 * 16  # qkv, proj, fc, fc-proj
    n = 2 * per_layer + 100 * 16  # + LM head
    assert measure.matmul_params(model) == n
    assert measure.flops_per_token(model, 32) == 3 * (2 * n + 4 * 2 * 16 * 32)
    assert measure.flops_per_token(model, 32, training=False) == 2 * n + 4 * 2 * 16 * 32


def test_percentile_and_timing():
    assert measure.percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert abs(measure.percentile([1.0, 2.0, 3.0, 4.0], 0.95) - 3.85) < 1e-9
    times = measure.time_call(lambda: None, torch.device("cpu"), warmup=1, repeats=5, max_seconds=10)
    assert len(times) == 5 and all(t >= 0 for t in times)


def test_fixed_inputs_are_identical_across_calls():
    split = ClassificationSplit([[1] * (3 + i % 7) for i in range(40)], [0] * 40, pad_id=0)
    a = measure.fixed_inputs(split, "classification", [1, 32], None)
    b = measure.fixed_inputs(split, "classification", [1, 32], None)
    assert a[1]["input_ids"].shape[0] == 1 and a[32]["input_ids"].shape[0] == 32
    assert torch.equal(a[32]["input_ids"], b[32]["input_ids"]) and "labels" not in a[1]


def test_count_params_counts_tied_weights_once_and_zeros():
    lin = torch.nn.Linear(4, 4, bias=False)
    model = torch.nn.Sequential(lin, torch.nn.Linear(4, 4, bias=False))
    model[1].weight = lin.weight
    with torch.no_grad():
        lin.weight[0].zero_()
    assert count_params(model) == (16, 12)


def test_compiled_latency_times_every_batch_size_through_torch_compile(tiny_bert_dir):
    """The compiled timing (reduce-overhead: CUDA graphs on a GPU, the compiled model on a CPU) reports a p50 per
    batch size and leaves the model usable eagerly."""
    from transformers import AutoModelForSequenceClassification

    from trainopt.measure import measure_compiled_latency

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    inputs = {b: {"input_ids": torch.randint(5, 100, (b, 16)), "attention_mask": torch.ones(b, 16, dtype=torch.long)}
              for b in (1, 4)}
    out = measure_compiled_latency(model, inputs, torch.device("cpu"), warmup=1, repeats=3, max_seconds=5)
    assert set(out) == {"compiled_latency_ms_b1_p50", "compiled_latency_ms_b4_p50"} and min(out.values()) > 0
    torch._dynamo.reset()
    with torch.inference_mode():
        assert model(**inputs[1]).logits.shape == (1, 2)


def test_the_2of4_speedup_is_the_fastest_sparse_mode_against_the_fastest_dense_mode():
    from trainopt.compress.prune.kernels import best_sparse_speedup, best_vs_best

    # Measured on an H200 (session 9): the hand-captured graph of both models ran math attention, so a sparse graph
    # beat a dense graph while both lost to the compiled dense model; only best against best counts.
    dense = {"latency_ms_b256_p50": 14.4, "graph_latency_ms_b256_p50": 35.6, "compiled_latency_ms_b256_p50": 13.9,
             "latency_ms_b16_p50": 4.4}
    sparse = {"latency_ms_b256_p50": 44.4, "graph_latency_ms_b256_p50": 33.6, "compiled_latency_ms_b256_p50": 12.4,
              "latency_ms_b16_p50": None}
    kernels = best_vs_best(dense, sparse)
    assert kernels == {"best_vs_best_speedup_b256": round(13.9 / 12.4, 3)}  # b16: no sparse timing, no ratio
    assert best_sparse_speedup(kernels, 256) == round(13.9 / 12.4, 3) and best_sparse_speedup(kernels, 16) == 0.0
    slower = best_vs_best(dense, {**sparse, "compiled_latency_ms_b256_p50": 20.0})
    assert best_sparse_speedup(slower, 256) < 1.0  # its graph (33.6) beats the dense graph (35.6): not a speedup
