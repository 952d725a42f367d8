"""De-duplication and train/held-out overlap (data.clean.dedup, data.clean.overlap).

Repeated rows: an exact (text, label) pair seen before adds nothing but weight, and is dropped. The same text with
different labels ("Untitled", "[no title]" under several classes) is ambiguity the data really has: every distinct
pair is kept (a model then learns the texts' label distribution) and the groups are counted.

A held-out text that also sits in the training split measures memory, not generalisation. `drop_test` (the default)
drops those rows from validation and test and keeps every training row; `drop_train` drops the training copies
instead (the held-out splits stay as given: the behaviour before 0.2, and the choice where the test set is a fixed
benchmark); `keep` only counts them. Evidence and the reasons: docs/methods/data.md."""

from __future__ import annotations

from collections import Counter, defaultdict


def drop_repeats(texts: list, labels: list | None, counts: Counter) -> tuple[list, list | None]:
    """Drop exact repeats of (text, label) (of text, without labels); count label-conflicting texts."""
    seen, keep = set(), []
    by_text: dict = defaultdict(set)
    for i, t in enumerate(texts):
        key = (t, labels[i]) if labels is not None else t
        if key in seen:
            counts["duplicates_dropped"] += 1
            continue
        seen.add(key)
        keep.append(i)
        if labels is not None:
            by_text[t].add(labels[i])
    conflicting = [t for t, ys in by_text.items() if len(ys) > 1]
    if conflicting:
        counts["conflicting_label_texts"] += len(conflicting)
        counts["conflicting_label_rows"] += sum(len(by_text[t]) for t in conflicting)
    return [texts[i] for i in keep], ([labels[i] for i in keep] if labels is not None else None)


def resolve_overlap(policy: str, splits: dict, counts: Counter) -> dict:
    """splits: {name: (texts, labels)} with "train" and the held-out splits (None where absent). Returns them with
    the overlap resolved by `policy` (drop_test | drop_train | keep), every decision counted."""
    train_texts = set(splits["train"][0])
    held_texts: set = set()
    out = dict(splits)
    for name in ("validation", "test"):
        texts, labels = splits.get(name) or (None, None)
        if texts is None:
            continue
        hit = [i for i, t in enumerate(texts) if t in train_texts]
        if not hit:
            continue
        counts[f"overlap_with_train_{name}"] += len(hit)
        if policy == "drop_test":
            gone = set(hit)
            keep = [i for i in range(len(texts)) if i not in gone]
            out[name] = ([texts[i] for i in keep], [labels[i] for i in keep] if labels is not None else None)
            counts[f"overlap_dropped_{name}"] += len(hit)
        held_texts.update(texts[i] for i in hit)
    if policy == "drop_train" and held_texts:
        texts, labels = splits["train"]
        keep = [i for i, t in enumerate(texts) if t not in held_texts]
        counts["overlap_dropped_train"] += len(texts) - len(keep)
        out["train"] = ([texts[i] for i in keep], [labels[i] for i in keep] if labels is not None else None)
    return out


_WORDS = {"duplicates_dropped": "repeated rows dropped", "conflicting_label_texts": "texts with several labels kept",
          "overlap_dropped_validation": "validation rows also in train dropped",
          "overlap_dropped_test": "test rows also in train dropped",
          "overlap_dropped_train": "training copies of held-out texts dropped",
          "empty_dropped_train": "empty training rows dropped", "html_cleaned": "texts stripped of HTML",
          "unseen_label_dropped_test": "test rows with unseen labels dropped",
          "unseen_label_dropped_validation": "validation rows with unseen labels dropped"}


def describe(stats: dict) -> str:
    """One line on what cleaning did to the data (the run's terminal summary and report)."""
    rows = stats.get("rows", {})
    parts = [f"{rows.get('train', 0):,} train / {rows.get('validation', 0):,} validation / "
             f"{rows.get('test', 0):,} test rows"]
    cleaning = stats.get("cleaning") or {}
    said = [f"{_WORDS[k]} {v:,}" for k, v in cleaning.items() if k in _WORDS]
    for name in ("validation", "test"):
        n = cleaning.get(f"overlap_with_train_{name}")
        if n and not cleaning.get(f"overlap_dropped_{name}") and not cleaning.get("overlap_dropped_train"):
            said.append(f"{name} rows also in train kept {n:,}")
    return parts[0] + ("; cleaning: " + ", ".join(said) if said else "; cleaning changed nothing")
