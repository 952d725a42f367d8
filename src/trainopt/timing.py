"""The ruler every stage is timed with: interleaved rounds, each figure's spread, each ratio's interval, and a probe
that says when the machine was too busy for the figures to be trusted.

Why by hand: `torch.utils.benchmark` times one statement at a time (all of A, then all of B), so a load change
between the two lands in the ratio; it has no notion of a paired comparison or of other processes on the machine.
Here the compared models run in alternating rounds (A B C, B C A, C A B, …; BLOCK calls each), so slow
and fast periods fall on all of them alike, and a speed ratio's 95% interval comes from a paired bootstrap over the
rounds (the same rounds resampled for both models).

Contention is read from the kernel while timing (Linux; elsewhere only the spread speaks): the number of runnable
tasks (/proc/stat `procs_running`, sampled every round — above the core count, someone waited for a CPU), the CPU
time the process got against the time its threads asked for (a CPU timing whose threads were descheduled), and
hypervisor steal. Measured on this project's 2-core machine (a 3-block MLP, 2 threads, batch 32): idle, 2 runnable
tasks and a CPU share of 0.99; next to one CPU-bound `python -c "while True: pass"`, 3 runnable, a share of 0.61 and
a p50 2.0x slower — the case where, in issue 22's report, a quickstart printed a 0.18x slowdown as fact.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field

import torch

from .results import Latency, Speed

NOISY_SPREAD = 0.25  # a figure whose interquartile range exceeds this fraction of its median is flagged
MIN_CPU_SHARE = 0.75  # a CPU timing whose threads got less of the CPU than this was descheduled
MAX_STEAL = 0.05  # a hypervisor taking more than this share of the CPU time
BLOCK = 2  # calls per model per round


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# --------------------------------------------------------------------------------------------- the machine
def _proc_stat() -> tuple[int | None, int, int]:
    """(runnable tasks, steal jiffies, all jiffies) from /proc/stat; (None, 0, 0) where there is none."""
    try:
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
            running = next((int(line.split()[1]) for line in f if line.startswith("procs_running")), None)
    except (OSError, ValueError):
        return None, 0, 0
    return running, (cpu[7] if len(cpu) > 7 else 0), sum(cpu)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class LoadProbe:
    """What the machine did while a timing ran. `sample()` once a round; `finish()` returns the record."""

    def __init__(self, device: torch.device):
        self.device = device
        self.threads = torch.get_num_threads()
        self.runnable: list[int] = []
        _, self._steal0, self._all0 = _proc_stat()
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        self.load_1m = _load()

    def sample(self) -> None:
        running, _, _ = _proc_stat()
        if running is not None:
            self.runnable.append(running)

    def finish(self) -> dict:
        wall = time.perf_counter() - self._wall0
        cpu = time.process_time() - self._cpu0
        _, steal1, all1 = _proc_stat()
        n = cores()
        out: dict = {"cores": n, "threads": self.threads, "load_1m": self.load_1m}
        warnings = []
        if self.runnable:
            runnable = sorted(self.runnable)[len(self.runnable) // 2]
            out["runnable_median"] = runnable
            if runnable > n:
                warnings.append(f"{runnable} runnable tasks on {n} cores: other processes competed for the CPU")
        if self.device.type == "cpu" and wall > 0:
            share = cpu / (wall * min(self.threads, n))
            out["cpu_share"] = round(share, 3)
            if share < MIN_CPU_SHARE:
                warnings.append(f"the timed threads got {share:.0%} of the CPU time they asked for")
        if all1 > self._all0:
            steal = (steal1 - self._steal0) / (all1 - self._all0)
            out["steal"] = round(steal, 4)
            if steal > MAX_STEAL:
                warnings.append(f"the hypervisor took {steal:.0%} of the CPU time (steal)")
        out["warnings"] = warnings
        return out


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# --------------------------------------------------------------------------------------------- the timing
@dataclass
class Timing:
    """Per model and batch size, the timed rounds (each a list of milliseconds per call), and the machine's record."""

    rounds: dict[str, dict[int, list[list[float]]]] = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)  # references that could not run here, and why

    def speed(self, name: str, device: torch.device) -> Speed:
        """One model's figures: p50/p95 and the interquartile range per batch size, the throughput at the largest
        batch, and `timing` (with whom it was interleaved, the machine's record, every warning)."""
        speed = Speed(device=device.type, threads=torch.get_num_threads())
        warnings = list(self.machine.get("warnings", []))
        for b, rounds in sorted(self.rounds[name].items()):
            times = [t for r in rounds for t in r]
            p50 = percentile(times, 0.5)
            lat = Latency(round(p50, 3), round(percentile(times, 0.95), 3), len(times),
                          round(percentile(times, 0.25), 3), round(percentile(times, 0.75), 3))
            speed.latency[b] = lat
            spread = (lat.q75_ms - lat.q25_ms) / p50 if p50 > 0 else 0.0
            if spread > NOISY_SPREAD:
                warnings.append(f"batch {b}: the middle half of the calls spans {spread:.0%} of the median")
        big = max(self.rounds[name])
        speed.throughput_items_per_s = round(big / (speed.p50(big) / 1000.0), 2)
        speed.timing = {"interleaved_with": [n for n in self.rounds if n != name],
                        "rounds": len(self.rounds[name][big]), **self.machine, "warnings": warnings,
                        "reliable": not warnings}
        return speed

    def speedup(self, ref: str, new: str, batch: int, resamples: int = 2000) -> tuple[float, float, float] | None:
        """ref's median latency / new's (above 1: `new` is faster) and its 95% interval: the rounds are resampled
        with replacement, the same rounds for both models (a paired bootstrap; seeded, so a report is reproducible)."""
        a, b = self.rounds.get(ref, {}).get(batch), self.rounds.get(new, {}).get(batch)
        if not a or not b:
            return None
        n = min(len(a), len(b))

        def ratio(idx) -> float:
            return percentile([t for i in idx for t in a[i]], 0.5) / percentile([t for i in idx for t in b[i]], 0.5)

        point = ratio(range(n))
        rng = random.Random(0)
        boot = sorted(ratio([rng.randrange(n) for _ in range(n)]) for _ in range(resamples))
        return round(point, 3), round(boot[int(0.025 * resamples)], 3), round(boot[int(0.975 * resamples) - 1], 3)


def time_models(models: dict, inputs: dict[int, dict], device: torch.device, warmup: int, repeats: int,
                max_seconds: float, autocast_dtype: torch.dtype | None = None) -> Timing:
    """Forward latency of each model on the same inputs, interleaved: per batch size, `warmup` untimed calls each (at
    least one: it tells whether a reference runs here), then rounds of BLOCK timed calls per model (one where
    `repeats` < 3·BLOCK) in a rotating order, until each model has `repeats` calls (at least 3 rounds, and no more than `max_seconds` per model and batch size). The first
    model is the one measured; a later one (a reference) that fails on this device (an int8 CPU kernel on a GPU) is
    left out, with the reason in `dropped`."""
    timing = Timing(rounds={name: {} for name in models})
    for m in models.values():
        m.eval()
    probe = LoadProbe(device)
    names = list(models)
    with torch.inference_mode():
        for b, batch in sorted(inputs.items()):
            batch = {k: v.to(device) for k, v in batch.items()}

            def call(model, batch=batch):
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    model(**batch)

            for name in list(names):
                try:
                    call(models[name])
                except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
                    if name == names[0]:
                        raise
                    names.remove(name)
                    del timing.rounds[name]
                    timing.dropped[name] = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
                    continue
                for _ in range(warmup - 1):
                    call(models[name])
            sync(device)
            block = BLOCK if repeats >= 3 * BLOCK else 1
            n_rounds = max(3, math.ceil(repeats / block))
            start = time.perf_counter()
            for r in range(n_rounds):
                for name in names[r % len(names):] + names[: r % len(names)]:
                    times = []
                    for _ in range(block):
                        t0 = time.perf_counter()
                        call(models[name])
                        sync(device)
                        times.append((time.perf_counter() - t0) * 1000.0)
                    timing.rounds[name].setdefault(b, []).append(times)
                probe.sample()
                if r >= 2 and time.perf_counter() - start > max_seconds * len(names):
                    break
    timing.machine = probe.finish()
    return timing
