"""Data augmentation: enlarge a labelled training split for the stages that follow (`kind: augment`).

The stage keeps every original example and adds up to `per_example` new ones per original, each made by one EDA
operation (round-robin over the enabled ones, so each operation gets its share). Filters: an augmented text
identical to its source, to another augmented text or to any original is dropped; long ones are cut to
`max_words`. Labels are kept. The augmented set is cached in the stage folder (`augmented.jsonl`, keyed by a hash
of the training texts and the stage's settings), so a resumed run reuses it; its statistics (counts per
operation, drops, mean word-level edit distance) go into the report.
Validation and test splits are never augmented.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
from functools import lru_cache
from pathlib import Path

from ... import assets
from ...results import AugmentResult
from . import eda

CACHE_FILE = "augmented.jsonl"
STATS_FILE = "augment.json"


def word_edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance over words (insertions, deletions, substitutions)."""
    prev = list(range(len(b) + 1))
    for i, wa in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, wb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (wa != wb))
        prev = cur
    return prev[-1]


def synonym_source(stage):
    """word → synonyms, cached: WordNet 3.0 from the asset cache."""
    from .wordnet import WordNet

    wn = WordNet(assets.asset_path("wordnet"))

    @lru_cache(maxsize=100_000)
    def synonyms(word: str) -> tuple[str, ...]:
        return tuple(wn.synonyms(word, max_senses=stage.max_senses))

    return synonyms


def augment_texts(texts: list[str], labels: list[str], stage, synonyms, seed: int,
                  engine=None, replacer=None) -> tuple[list, list, list, dict]:
    """(new texts, their labels, their source indices, statistics). Deterministic for a seed (and engine).

    Per example: its back-translation (when an engine is given), its contextual variants (when a replacer is
    given), then `per_example` EDA variants."""
    rates = stage.eda.model_dump()
    ops = [op for op in eda.OPERATIONS if rates[op] > 0] if stage.per_example else []
    back = None
    bt_seconds = None
    if engine is not None:
        from .backtranslate import back_translate

        t0 = time.perf_counter()
        back = back_translate(texts, engine, stage.backtranslate.batch_size)
        bt_seconds = time.perf_counter() - t0
    contextual = []
    if replacer is not None:
        spec = stage.contextual
        for k in range(spec.per_example):
            rngs = [random.Random(f"{seed}:contextual{k}:{i}") for i in range(len(texts))]
            contextual.append(replacer.augment(texts, spec.rate, rngs))
    originals = set(texts)
    seen: set[str] = set()
    out_texts, out_labels, sources = [], [], []
    made = {op: 0 for op in (["backtranslate"] if back is not None else []) + (["contextual"] if contextual else [])
            + ops}
    dropped = {"identical": 0, "duplicate": 0, "truncated": 0}
    distance_sum = 0
    for i, (text, label) in enumerate(zip(texts, labels)):
        rng = random.Random(f"{seed}:{i}")  # one stream per example: the same output whatever the order
        candidates = [("backtranslate", back[i])] if back is not None else []
        candidates += [("contextual", variants[i]) for variants in contextual]
        for k in range(stage.per_example):
            op = ops[(i + k) % len(ops)]
            candidates.append((op, eda.apply(op, text, rates[op], synonyms, rng)))
        for op, new in candidates:
            words = new.split()
            if stage.max_words and len(words) > stage.max_words:
                words = words[: stage.max_words]
                new = " ".join(words)
                dropped["truncated"] += 1
            if new == text or new in originals or not words:
                dropped["identical"] += 1
                continue
            if new in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(new)
            out_texts.append(new)
            out_labels.append(label)
            sources.append(i)
            made[op] += 1
            distance_sum += word_edit_distance(text.split(), words)
    stats = {"originals": len(texts), "added": len(out_texts), "per_operation": made, "dropped": dropped,
             "mean_word_edit_distance": round(distance_sum / len(out_texts), 3) if out_texts else None}
    if bt_seconds is not None:
        stats["backtranslate"] = {"engine": stage.backtranslate.engine, "pivot": stage.backtranslate.pivot,
                                  "seconds": round(bt_seconds, 2),
                                  "texts_per_s_round_trip": round(len(texts) / bt_seconds, 1) if bt_seconds else None}
    return out_texts, out_labels, sources, stats


def _key(texts: list[str], labels: list[str], stage, seed: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(stage.model_dump(mode="json"), sort_keys=True).encode())
    h.update(str(seed).encode())
    for t, y in zip(texts, labels):
        h.update(t.encode("utf-8", "replace") + b"\x00" + str(y).encode() + b"\x01")
    return h.hexdigest()


def _load_cache(stage_dir: Path, key: str):
    stats_file = stage_dir / STATS_FILE
    if not (stats_file.is_file() and (stage_dir / CACHE_FILE).is_file()):
        return None
    stats = json.loads(stats_file.read_text())
    if stats.get("key") != key:
        return None
    rows = [json.loads(line) for line in (stage_dir / CACHE_FILE).read_text(encoding="utf-8").splitlines()]
    return [r["text"] for r in rows], [r["label"] for r in rows], [r["source"] for r in rows], stats


def _write_cache(stage_dir: Path, new_texts, new_labels, sources, stats) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / (CACHE_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for t, y, i in zip(new_texts, new_labels, sources):
            f.write(json.dumps({"text": t, "label": y, "source": i}, ensure_ascii=False) + "\n")
    os.replace(tmp, stage_dir / CACHE_FILE)  # the data first, then the stats that vouch for it
    tmp = stage_dir / (STATS_FILE + ".tmp")
    tmp.write_text(json.dumps(stats, indent=1))
    os.replace(tmp, stage_dir / STATS_FILE)


CHANGES = "data"  # the runner hands this stage the texts, not a model


def run(texts, stage, ctx, stage_dir: Path):
    """(augmented TextData, its AugmentResult). `texts` is the run's TextData before this stage (classification:
    check() refuses an augment stage in a causal_lm recipe before any work)."""
    seed = ctx.recipe.run.seed if stage.seed is None else stage.seed
    start = time.perf_counter()
    key = _key(texts.train, texts.train_labels, stage, seed)
    cached = _load_cache(stage_dir, key)
    if cached is not None:
        new_texts, new_labels, sources, stats = cached
        stats["cached"] = True
    else:
        engine = None
        if stage.backtranslate is not None:
            from .backtranslate import make_engine

            engine = make_engine(stage.backtranslate)
        replacer = None
        if stage.contextual is not None:
            from .contextual import make_replacer

            replacer = make_replacer(stage.contextual, ctx.recipe.model.path)
        new_texts, new_labels, sources, stats = augment_texts(texts.train, texts.train_labels, stage,
                                                              synonym_source(stage) if stage.per_example else None,
                                                              seed, engine, replacer)
        stats.update({"key": key, "seconds": round(time.perf_counter() - start, 2), "seed": seed,
                      "synonyms": stage.synonyms, "rates": stage.eda.model_dump(), "per_example": stage.per_example,
                      "backtranslate_spec": stage.backtranslate.model_dump() if stage.backtranslate else None,
                      "contextual_spec": stage.contextual.model_dump() if stage.contextual else None})
        _write_cache(stage_dir, new_texts, new_labels, sources, stats)
        stats["cached"] = False
    augmented = dataclasses.replace(texts, train=texts.train + new_texts,
                                    train_labels=texts.train_labels + new_labels,
                                    stats={**texts.stats, "augmented_by": stage.name,
                                           "train_rows_after_augment": len(texts.train) + len(new_texts)})
    extra = {k: v for k, v in stats.items() if k != "key" and k not in AugmentResult.TYPED}
    entry = AugmentResult(name=stage.name, originals=stats["originals"], added=stats["added"],
                          train_rows=len(augmented.train), per_operation=stats["per_operation"],
                          dropped=stats["dropped"], mean_word_edit_distance=stats["mean_word_edit_distance"],
                          cached=stats["cached"], details=extra,
                          examples=[{"source": texts.train[i], "augmented": t}
                                    for t, i in zip(new_texts[:4], sources[:4])])
    return augmented, entry
