"""Typed stage results. A stage's `run()` returns its model and an `Outcome` (what it did, what it cost, what it
claims); the runner measures the model and builds a `StageResult` (quality, size, speed per batch size, cost, effect,
comparisons). Speed is held per batch size (`Speed.latency[32].p50_ms`) and written to report.json in the report
contract's flat keys (`latency_ms_b32_p50`, ../DESIGN.md) by `to_json`; `from_json` reads a finished stage back on
--resume. Nothing outside this module spells or parses those keys."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

_LATENCY = re.compile(r"latency_ms_b(\d+)_(p50|p95|q25|q75)")
_REPEATS = re.compile(r"latency_repeats_b(\d+)")


def latency_key(batch: int, q: str = "p50") -> str:
    """The report contract's name for a latency figure (what `--set search.metric=…` and the report use)."""
    return f"latency_ms_b{batch}_{q}"


def batch_of_latency_key(key: str) -> int | None:
    m = _LATENCY.fullmatch(key)
    return int(m.group(1)) if m and m.group(2) == "p50" else None


@dataclass
class Latency:
    p50_ms: float | None = None
    p95_ms: float | None = None
    repeats: int | None = None
    q25_ms: float | None = None  # the interquartile range: the middle half of the timed calls
    q75_ms: float | None = None


@dataclass
class Speed:
    """Forward latency per batch size on one device (warm-up and repeats, the same inputs for every stage), the
    throughput at the largest batch, and, for causal LMs, generation at batch 1 (`generation`: generate_* keys)."""

    latency: dict[int, Latency] = field(default_factory=dict)
    throughput_items_per_s: float | None = None
    device: str | None = None
    threads: int | None = None
    generation: dict = field(default_factory=dict)
    # how it was timed (timing.py): interleaved_with, rounds, the machine's record (cores, runnable tasks, CPU share,
    # steal), warnings, reliable
    timing: dict = field(default_factory=dict)

    @property
    def reliable(self) -> bool:
        return self.timing.get("reliable", True)

    @classmethod
    def unmeasured(cls, batch_sizes) -> Speed:
        return cls(latency={int(b): Latency() for b in batch_sizes})

    def p50(self, batch: int) -> float | None:
        lat = self.latency.get(batch)
        return lat.p50_ms if lat else None

    @property
    def largest_batch(self) -> int | None:
        return max(self.latency) if self.latency else None

    def to_json(self) -> dict:
        out: dict = {}
        for b, lat in sorted(self.latency.items()):
            out[latency_key(b)] = lat.p50_ms
            for q in ("p95", "q25", "q75"):
                if getattr(lat, f"{q}_ms") is not None:
                    out[latency_key(b, q)] = getattr(lat, f"{q}_ms")
            if lat.repeats is not None:
                out[f"latency_repeats_b{b}"] = lat.repeats
        out["throughput_items_per_s"] = self.throughput_items_per_s
        if self.threads is not None:
            out["threads"] = self.threads
        if self.device is not None:
            out["device"] = self.device
        out.update(self.generation)
        if self.timing:
            out["timing"] = self.timing
        return out

    @classmethod
    def from_json(cls, d: dict) -> Speed:
        speed = cls(throughput_items_per_s=d.get("throughput_items_per_s"), device=d.get("device"),
                    threads=d.get("threads"), generation={k: v for k, v in d.items() if k.startswith("generate_")},
                    timing=d.get("timing", {}))
        for k, v in d.items():
            if m := _LATENCY.fullmatch(k):
                lat = speed.latency.setdefault(int(m.group(1)), Latency())
                setattr(lat, f"{m.group(2)}_ms", v)
            elif m := _REPEATS.fullmatch(k):
                speed.latency.setdefault(int(m.group(1)), Latency()).repeats = v
        return speed


@dataclass
class Size:
    params: int
    nonzero_params: int
    disk_bytes: int


Claims = Literal["kernel", "shape", "mask"]


@dataclass
class Outcome:
    """What a stage's run() returns besides its model.

    effect: "unchanged" (the model keeps its shape: training), "compressed" (the runner labels it from measurements:
    compare.classify_effect) or "accelerated" (a stage that timed a faster kernel of its own, e.g. 2:4 sparse).
    claims: what a compression changes — "kernel" (another kernel runs), "shape" (tensors shrank), "mask" (zeros).
    details: the technique's own sections of the report entry (training, pruning, quantization, distillation,
    notes). measure_device: where the model must be timed (int8 dynamic kernels run on the CPU). saved_meta: what
    the saved folder's trainopt.json must also record (a quantised model's format)."""

    effect: Literal["unchanged", "compressed", "accelerated"] = "compressed"
    claims: Claims = "kernel"
    cost: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    measure_device: str | None = None
    saved_meta: dict = field(default_factory=dict)
    # a stage that writes its own folder in another runtime's format (export): the folder (the runner does not save
    # the model), the model to evaluate and time in its place (that runtime behind the torch-module interface), and
    # its (parameters, non-zero parameters)
    folder: Path | None = None
    runtime: Any = None
    params: tuple[int, int] | None = None

    @classmethod
    def trained(cls, summary: dict, effect: str = "unchanged", extra_wall_s: float = 0.0, **kw) -> Outcome:
        """The outcome of a stage whose cost is a training run (its summary in details["training"])."""
        cost = {"wall_s": round(summary["train_wall_s"] + extra_wall_s, 2), "tokens_per_s": summary["tokens_per_s"],
                "mfu": summary["mfu"], "steady_tokens_per_s": summary.get("steady_tokens_per_s"),
                "steady_mfu": summary.get("steady_mfu"), "peak_mem_bytes": summary["peak_mem_bytes"]}
        details = {"training": summary, **kw.pop("details", {})}
        return cls(effect=effect, cost=cost, details=details, **kw)


DETAIL_KEYS = ("training", "quantization", "distillation", "pruning", "lora", "export", "samples", "budget", "notes")


@dataclass
class StageResult:
    """One stage of the report: see the report contract in ../DESIGN.md (`to_json` writes it)."""

    name: str
    kind: str
    effect: str  # baseline | unchanged | masked | smaller | accelerated
    quality: dict  # on the test split: accuracy, f1_macro, loss, perplexity (null when not measured)
    size: Size
    speed: Speed
    cost: dict
    checkpoint: str  # the saved model folder, relative to the run directory
    validation_quality: dict | None = None
    details: dict = field(default_factory=dict)  # training / pruning / quantization / distillation / notes
    vs_parent: dict | None = None
    vs_baseline: dict | None = None

    def to_json(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "effect": self.effect, "quality": self.quality}
        if self.validation_quality is not None:
            out["validation_quality"] = self.validation_quality
        out.update({"size": vars(self.size).copy(), "speed": self.speed.to_json(), "cost": self.cost})
        out.update({k: self.details[k] for k in DETAIL_KEYS if k in self.details})
        if self.vs_parent is not None:
            out["vs_parent"] = self.vs_parent
        out["vs_baseline"] = self.vs_baseline
        out["checkpoint"] = self.checkpoint
        return out

    @classmethod
    def from_json(cls, d: dict) -> StageResult:
        return cls(name=d["name"], kind=d["kind"], effect=d["effect"], quality=d["quality"], size=Size(**d["size"]),
                   speed=Speed.from_json(d["speed"]), cost=d.get("cost", {}), checkpoint=d["checkpoint"],
                   validation_quality=d.get("validation_quality"),
                   details={k: d[k] for k in DETAIL_KEYS if k in d}, vs_parent=d.get("vs_parent"),
                   vs_baseline=d.get("vs_baseline"))


@dataclass
class AugmentResult:
    """A stage that changes the training data, not the model (augment): one entry of the report's `augmentation`
    list (and its stages/<name>/stage.json). The counts are typed; the stage's settings and engine timings are in
    `details`, written beside them."""

    name: str
    originals: int  # training examples before the stage
    added: int  # new examples kept (identical and duplicate ones dropped)
    train_rows: int  # training examples after it
    per_operation: dict  # examples added per operation (synonym, insert, swap, delete, backtranslate, contextual)
    dropped: dict  # identical / duplicate / truncated
    mean_word_edit_distance: float | None
    cached: bool  # read back from the stage's cache (same data, settings and seed)
    examples: list = field(default_factory=list)  # a few {source, augmented} pairs for the report
    details: dict = field(default_factory=dict)  # seed, seconds, rates, synonyms, engine specs and timings
    kind: str = "augment"

    TYPED = ("name", "kind", "originals", "added", "train_rows", "per_operation", "dropped", "mean_word_edit_distance",
             "cached", "examples")

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "originals": self.originals, "added": self.added,
                "per_operation": self.per_operation, "dropped": self.dropped,
                "mean_word_edit_distance": self.mean_word_edit_distance, **self.details, "cached": self.cached,
                "train_rows": self.train_rows, "examples": self.examples}

    @classmethod
    def from_json(cls, d: dict) -> AugmentResult:
        return cls(**{k: d[k] for k in cls.TYPED if k in d}, details={k: v for k, v in d.items()
                                                                      if k not in cls.TYPED})
