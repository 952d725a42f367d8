"""Text-classification data sets for the quality checks of issue 27, built offline from the assets `trainopt data
fetch` brings (never from `tate_text`, which is held out for acceptance):

  fine_foods        the quickstart's reviews, great vs other (2 classes, 65/35)
  fine_foods_noisy  the same reviews, training split made imbalanced (85/15) and 15% of its labels flipped at random;
                    the test split is the clean one (label noise and imbalance, synthetic)
  austen_novels     paragraphs of Jane Austen's six novels (15-120 words) -> which novel (6 classes, by length)
  wordnet_pos       WordNet 3.0 glosses -> the part of speech of the synset (4 classes, nouns ~70%)
  wordnet_noun10    WordNet noun glosses -> the synset's supersense, the 10 largest (noun.artifact, noun.person, ...)

Each is written as <out>/<name>/{train,test}.jsonl with `text` and `label` (a seeded random split; at most 4,000
training and 1,000 test rows; the recipe carves its validation split from train as usual).

    python benchmarks/quality_data.py --out bench_data/quality
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

from trainopt import assets

LEXNAMES = {"03": "noun.Tops", "04": "noun.act", "05": "noun.animal", "06": "noun.artifact", "07": "noun.attribute",
            "08": "noun.body", "09": "noun.cognition", "10": "noun.communication", "11": "noun.event",
            "12": "noun.feeling", "13": "noun.food", "14": "noun.group", "15": "noun.location", "16": "noun.motive",
            "17": "noun.object", "18": "noun.person", "19": "noun.phenomenon", "20": "noun.plant",
            "21": "noun.possession", "22": "noun.process", "23": "noun.quantity", "24": "noun.relation",
            "25": "noun.shape", "26": "noun.state", "27": "noun.substance", "28": "noun.time"}
TRAIN, TEST = 4000, 1000


def _write(out: Path, name: str, train: list[dict], test: list[dict]) -> None:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{name}: train {len(train)} {dict(Counter(r['label'] for r in train).most_common())}; test {len(test)}")


def _split(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    rows = rows[:]
    random.Random(seed).shuffle(rows)
    return rows[TEST:TEST + TRAIN], rows[:TEST]


def fine_foods(out: Path) -> None:
    src = assets.asset_path("fine_foods")
    read = lambda f: [{"text": r["review"], "label": r["score"]}  # noqa: E731
                      for r in map(json.loads, (src / f).read_text().splitlines())]
    train, test = read("train.jsonl"), read("test.jsonl")
    _write(out, "fine_foods", train, test)
    rng = random.Random(1)
    great = [r for r in train if r["label"] == "great"]
    other = [r for r in train if r["label"] == "other"]
    noisy = [dict(r) for r in great + rng.sample(other, len(great) * 15 // 85)]
    for r in rng.sample(noisy, len(noisy) * 15 // 100):
        r["label"] = "other" if r["label"] == "great" else "great"
    rng.shuffle(noisy)
    _write(out, "fine_foods_noisy", noisy, test)


def austen_novels(out: Path) -> None:
    src = assets.asset_path("austen")
    rows = []
    for path in sorted(src.glob("*.txt")):
        for para in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
            text = " ".join(para.split())
            if 15 <= len(text.split()) <= 120 and not text.isupper():
                rows.append({"text": text, "label": path.stem})
    train, test = _split(rows, 2)
    _write(out, "austen_novels", train, test)


def _wordnet(pos_files: list[str]) -> list[tuple[str, str, str]]:
    """(part of speech, lexicographer file number, gloss) of every synset in the given data files."""
    src = assets.asset_path("wordnet")
    out = []
    for name in pos_files:
        for line in (src / f"data.{name}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue
            head, gloss = line.split("|", 1)
            out.append((name, head.split()[1], gloss.strip()))
    return out


def wordnet_pos(out: Path) -> None:
    rows = [{"text": g, "label": pos} for pos, _, g in _wordnet(["noun", "verb", "adj", "adv"])]
    train, test = _split(rows, 3)
    _write(out, "wordnet_pos", train, test)


def wordnet_noun10(out: Path) -> None:
    synsets = _wordnet(["noun"])
    top = {lex for lex, _ in Counter(lex for _, lex, _ in synsets).most_common(10)}
    rows = [{"text": g, "label": LEXNAMES[lex]} for _, lex, g in synsets if lex in top]
    train, test = _split(rows, 4)
    _write(out, "wordnet_noun10", train, test)


BUILDERS = {"fine_foods": fine_foods, "austen_novels": austen_novels, "wordnet_pos": wordnet_pos,
            "wordnet_noun10": wordnet_noun10}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_data/quality")
    args = ap.parse_args()
    for build in BUILDERS.values():
        build(Path(args.out))


if __name__ == "__main__":
    main()
