"""How much of a classification batch is padding: random batches padded to their longest row (the HF Trainer's
DataCollatorWithPadding) vs trainopt's length buckets, with widths rounded to a multiple (`data.pad_to_multiple_of`),
and how many distinct batch widths (compiled graphs under `compile_dynamic: static`) each gives. Data only, no
model: hardware-independent.

    python benchmarks/padding_stats.py [--recipe quickstart] [--batch 64] [--multiples 1,8,16,32]
"""

from __future__ import annotations

import argparse
import math

import trainopt
from trainopt.data.prepare import tokenize
from trainopt.models import load_tokenizer
from trainopt.runner import validate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="quickstart")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--multiples", default="1,8,16,32")
    args = ap.parse_args()
    raw = trainopt.load_recipe(args.recipe).model_dump(mode="json")
    raw["stages"] = raw["stages"][:1]
    recipe, _, texts = validate(raw)
    train = tokenize(texts, load_tokenizer(recipe, texts.train), recipe).train
    lengths = [len(x) for x in train.input_ids]
    print(f"{args.recipe}: {len(lengths)} training examples, max_length {recipe.data.max_length}, batch {args.batch}")
    print("| batches | pad to a multiple of | real tokens / padded tokens | distinct widths |")
    print("|---|---|---|---|")
    for bucket in (False, True):
        batches = train.batches(args.batch, 0, 0, bucket=bucket)
        for m in (int(x) for x in args.multiples.split(",")):
            widths = [min(math.ceil(max(lengths[i] for i in b) / m) * m, recipe.data.max_length) for b in batches]
            padded = sum(len(b) * w for b, w in zip(batches, widths))
            print(f"| {'length buckets' if bucket else 'random'} | {m} | {sum(lengths) / padded:.3f} | "
                  f"{len(set(widths))} |")


if __name__ == "__main__":
    main()
