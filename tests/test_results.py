"""Typed stage results: the report contract's keys written and read back exactly, and the effect labels decided from
measurements (compare.py)."""

from __future__ import annotations

import json

import torch

from trainopt import measure
from trainopt.compare import classify_effect, compare
from trainopt.results import Latency, Outcome, Size, Speed, StageResult, batch_of_latency_key, latency_key


def _result(name="s", p50=(2.0, 40.0), disk=1000, params=100, nonzero=100, device="cpu", quality=0.9):
    speed = Speed(latency={1: Latency(p50[0], p50[0] * 1.2, 10), 32: Latency(p50[1], p50[1] * 1.1, 5)},
                  throughput_items_per_s=round(32 / (p50[1] / 1000), 2), device=device, threads=2)
    return StageResult(name=name, kind="train", effect="unchanged", quality={"accuracy": quality},
                       size=Size(params, nonzero, disk), speed=speed, cost={"wall_s": 1.0}, checkpoint=f"stages/{name}")


def test_speed_writes_the_contract_keys_and_reads_them_back():
    speed = _result().speed
    speed.generation = {"generate_tokens_per_s_b1": 50.0, "generate_new_tokens": 16}
    out = speed.to_json()
    assert out["latency_ms_b32_p50"] == 40.0 and out["latency_ms_b1_p95"] == 2.4 and out["latency_repeats_b32"] == 5
    assert out["device"] == "cpu" and out["generate_tokens_per_s_b1"] == 50.0
    assert Speed.from_json(json.loads(json.dumps(out))) == speed
    assert latency_key(8) == "latency_ms_b8_p50" and batch_of_latency_key("latency_ms_b8_p50") == 8
    assert batch_of_latency_key("latency_ms_b8_p95") is None
    unmeasured = Speed.unmeasured([1, 32]).to_json()
    assert unmeasured == {"latency_ms_b1_p50": None, "latency_ms_b32_p50": None, "throughput_items_per_s": None}


def test_stage_result_round_trips_through_json_as_a_resumed_run_reads_it():
    r = _result()
    r.details = {"training": {"steps": 3}, "notes": ["x"]}
    r.validation_quality = {"accuracy": 0.8}
    r.vs_baseline = {"quality_metric": "accuracy", "quality_delta": 0.0}
    text = json.dumps(r.to_json())
    back = StageResult.from_json(json.loads(text))
    assert back == r and json.dumps(back.to_json()) == text
    assert list(r.to_json()) == ["name", "kind", "effect", "quality", "validation_quality", "size", "speed", "cost",
                                 "training", "notes", "vs_baseline", "checkpoint"]


def test_measure_latency_returns_typed_speed():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids):
            return self.m(input_ids)

    inputs = {1: {"input_ids": torch.randn(1, 8)}, 4: {"input_ids": torch.randn(4, 8)}}
    speed = measure.measure_latency(Wrap(), inputs, torch.device("cpu"), warmup=1, repeats=3, max_seconds=5)
    assert sorted(speed.latency) == [1, 4] and speed.latency[4].repeats == 3 and speed.p50(1) > 0
    assert speed.largest_batch == 4 and speed.throughput_items_per_s == round(4 / (speed.p50(4) / 1000), 2)


def test_effect_labels_follow_what_the_technique_claims_and_what_was_measured():
    parent = _result("parent")
    faster_smaller = _result("q", p50=(1.0, 20.0), disk=300)
    assert classify_effect(faster_smaller, parent, Outcome(claims="kernel")) == "accelerated"  # timed separately
    same_speed_smaller = _result("q", p50=(2.0, 39.0), disk=300)  # 1.03x: within noise
    assert classify_effect(same_speed_smaller, parent, Outcome(claims="kernel")) == "smaller"
    other_device = _result("q", p50=(1.0, 20.0), disk=1000, device="cuda")  # timed elsewhere: no speed claim
    assert classify_effect(other_device, parent, Outcome(claims="kernel")) == "unchanged"
    # a shape change is "smaller" even when it happens to time faster; zeros in dense tensors are only "masked"
    assert classify_effect(faster_smaller, parent, Outcome(claims="shape")) == "smaller"
    masked = _result("p", p50=(1.0, 20.0), nonzero=50)
    assert classify_effect(masked, parent, Outcome(claims="mask")) == "masked"
    assert classify_effect(masked, parent, Outcome(effect="accelerated", claims="mask")) == "accelerated"
    assert classify_effect(parent, parent, Outcome(effect="unchanged")) == "unchanged"
    # an export at the same speed and size with the few exact zeros its parent had is not a mask; a zero-padded one is
    few_zeros, padded = _result("x", nonzero=99.5), _result("x", nonzero=60)
    assert classify_effect(few_zeros, parent, Outcome(claims="kernel")) == "unchanged"
    assert classify_effect(padded, parent, Outcome(claims="kernel")) == "masked"


def test_compare_reports_ratios_against_the_base():
    base, stage = _result("base"), _result("s", p50=(1.0, 10.0), disk=250, quality=0.85)
    out = compare(stage, base, "classification")
    assert out == {"quality_metric": "accuracy", "quality_delta": -0.05, "speedup_b1": 2.0, "speedup_b32": 4.0,
                   "timed": "separately", "size_ratio": 0.25}
