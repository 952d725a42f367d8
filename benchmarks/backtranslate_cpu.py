"""Apertium back-translation throughput on the CPU: English → Spanish → English over real reviews.

    python benchmarks/backtranslate_cpu.py [--reviews 1000] [--batch-sizes 64,256,1000] [--repeats 2]

Takes the first N cleaned training reviews of the quickstart data, counts their sentences (split after . ! ?),
and times the round trip through trainopt's Apertium engine at several batch sizes (one engine call per batch
and direction). Prints reviews/s and sentences/s for each, and a few examples.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

from trainopt import assets, load_recipe
from trainopt.data.prepare import load_texts
from trainopt.data.augment.backtranslate import ApertiumEngine, back_translate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviews", type=int, default=1000)
    ap.add_argument("--batch-sizes", default="64,256,1000")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    texts = load_texts(load_recipe("quickstart")).train[: args.reviews]
    sentences = sum(len([s for s in re.split(r"(?<=[.!?])\s+", t) if s.strip()]) for t in texts)
    words = sum(len(t.split()) for t in texts)
    engine = ApertiumEngine(assets.asset_path("apertium"))
    print(f"{len(texts)} reviews, {sentences} sentences, {words} words")
    print("| batch size | seconds (median of repeats) | reviews/s | sentences/s |")
    print("|---|---|---|---|")
    out = None
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = back_translate(texts, engine, bs)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        print(f"| {bs} | {t:.2f} | {len(texts) / t:.1f} | {sentences / t:.1f} |", flush=True)
    changed = sum(a != b for a, b in zip(texts, out))
    print(f"\n{changed} of {len(texts)} reviews changed by the round trip")
    for a, b in list(zip(texts, out))[:3]:
        print(f"- {a[:150]}\n  → {b[:150]}")


if __name__ == "__main__":
    main()
