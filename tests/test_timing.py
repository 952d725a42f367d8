"""The ruler (timing.py): interleaved rounds, spread, paired-bootstrap intervals, and a probe that names a busy
machine — tested with a real competing process, not a mocked one."""

from __future__ import annotations

import subprocess
import sys

import torch

from trainopt.compare import classify_effect, compare
from trainopt.results import Outcome
from trainopt.timing import LoadProbe, Timing, cores, time_models
from tests.test_results import _result


class Recorder(torch.nn.Module):
    def __init__(self, name, log):
        super().__init__()
        self.name, self.log = name, log

    def forward(self, input_ids):
        self.log.append(self.name)
        return input_ids


def test_models_are_timed_in_rotating_rounds_with_the_same_number_of_calls():
    log: list[str] = []
    models = {n: Recorder(n, log) for n in "abc"}
    inputs = {1: {"input_ids": torch.zeros(1, 4)}, 8: {"input_ids": torch.zeros(8, 4)}}
    timing = time_models(models, inputs, torch.device("cpu"), warmup=1, repeats=6, max_seconds=10)
    timed = log[3:]  # one warm-up call each, then rounds of two calls per model
    assert timed[:18] == list("aabbcc" "bbccaa" "ccaabb")
    for name in "abc":
        assert [len(r) for r in timing.rounds[name][1]] == [2, 2, 2] and len(timing.rounds[name][8]) == 3
    speed = timing.speed("a", torch.device("cpu"))
    assert speed.timing["interleaved_with"] == ["b", "c"] and speed.timing["rounds"] == 3
    lat = speed.latency[8]
    assert lat.repeats == 6 and lat.q25_ms <= lat.p50_ms <= lat.q75_ms <= lat.p95_ms


def test_a_speed_ratio_carries_a_paired_interval_that_a_shared_slowdown_does_not_widen():
    # a machine that slows down for half the rounds slows both models alike: the pairing keeps the ratio tight
    slow = [1.0] * 5 + [3.0] * 5
    t = Timing(rounds={"ref": {32: [[10.0 * s, 10.2 * s] for s in slow]},
                       "new": {32: [[5.0 * s, 5.1 * s] for s in slow]}})
    point, lo, hi = t.speedup("ref", "new", 32)
    assert 1.9 < lo <= point <= hi < 2.1
    # a noisy stage: its interval straddles the threshold
    noisy = Timing(rounds={"ref": {32: [[10.0, 10.0]] * 10},
                           "new": {32: [[x, x] for x in (6.0, 12.0, 7.0, 11.0, 6.5, 12.5, 7.5, 11.5, 6.0, 12.0)]}})
    point, lo, hi = noisy.speedup("ref", "new", 32)
    assert lo < 1.0 < hi and noisy.speedup("ref", "other", 32) is None
    assert noisy.speed("new", torch.device("cpu")).timing["reliable"] is False  # its spread is flagged


def _timing(parent_ms, stage_rounds, warnings=()):
    t = Timing(rounds={"parent": {1: [[1.0, 1.0]] * 10, 32: [[parent_ms, parent_ms]] * 10},
                       "q": {1: [[0.5, 0.5]] * 10, 32: [[x, x] for x in stage_rounds]}},
               machine={"warnings": list(warnings)})
    return t


def test_accelerated_only_where_the_interval_clears_the_threshold_on_a_quiet_machine():
    parent = _result("parent")
    for rounds, warnings, label, note in (
            ([20.0] * 10, (), "accelerated", None),
            ([14.0, 40.0] * 5, (), "smaller", "does not clear 1.10x"),
            ([20.0] * 10, ("3 runnable tasks on 2 cores",), "smaller", "timing is unreliable")):
        timing = _timing(40.0, rounds, warnings)
        stage = _result("q", disk=300)
        stage.speed = timing.speed("q", torch.device("cpu"))
        notes: list[str] = []
        assert classify_effect(stage, parent, Outcome(claims="kernel"), timing, notes) == label
        assert (note is None and not notes) or note in notes[0]
        vs = compare(stage, parent, "classification", timing)
        assert vs["timed"] == "interleaved" and vs["speedup_b32_ci95"][0] <= vs["speedup_b32"] <= vs["speedup_b32_ci95"][1]


def test_the_probe_names_a_machine_busy_with_another_process():
    """Next to one busy-looping process per core, the timed threads wait for a CPU: the probe says so."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores())]
    try:
        probe = LoadProbe(torch.device("cpu"))
        a = torch.randn(256, 256)
        for _ in range(30):
            for _ in range(40):
                a = torch.tanh(a @ a)
            probe.sample()
        record = probe.finish()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert record["warnings"], record
    assert record.get("runnable_median", 0) > cores() or record.get("cpu_share", 1.0) < 0.75


def test_a_reference_that_cannot_run_here_is_left_out_not_fatal():
    class Broken(torch.nn.Module):
        def forward(self, input_ids):
            raise NotImplementedError("no kernel for this device")

    log: list[str] = []
    timing = time_models({"stage": Recorder("stage", log), "ref": Broken()}, {1: {"input_ids": torch.zeros(1, 4)}},
                         torch.device("cpu"), warmup=2, repeats=3, max_seconds=5)
    assert list(timing.rounds) == ["stage"] and "no kernel" in timing.dropped["ref"]
    assert len(log) == 2 + 3  # the warm-up calls, then the timed ones
    speed = timing.speed("stage", torch.device("cpu"))
    assert speed.timing["interleaved_with"] == [] and speed.latency[1].repeats == 3
