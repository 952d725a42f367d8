"""Data: every source format, cleaning counts, splits, labels, encoding errors, batching and packing."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from trainopt.data.batching import ClassificationSplit
from trainopt.data.prepare import load_texts, tokenize
from trainopt.errors import DataError, RecipeError
from trainopt.recipe import load_recipe

from .conftest import make_reviews, need_builtin, write_jsonl


def recipe_for(source, task="classification", **data):
    stages = [{"kind": "eval"}]
    return load_recipe({"task": task, "model": {"path": "builtin:minilm-l6"},
                        "data": {"source": str(source), **data}, "stages": stages})


ROWS = make_reviews(100)


def _write_all(tmp: Path) -> dict[str, Path]:
    df = pd.DataFrame(ROWS)
    paths = {"jsonl": write_jsonl(tmp / "d.jsonl", ROWS), "csv": tmp / "d.csv", "parquet": tmp / "d.parquet"}
    df.to_csv(paths["csv"], index=False)
    df.to_parquet(paths["parquet"])
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_pandas(df.iloc[:80].reset_index(drop=True)),
                          "test": datasets.Dataset.from_pandas(df.iloc[80:].reset_index(drop=True))}) \
        .save_to_disk(str(tmp / "ds"))
    paths["datasets"] = tmp / "ds"
    return paths


def test_every_table_source_reads_the_same_rows(tmp_path):
    for fmt, path in _write_all(tmp_path).items():
        texts = load_texts(recipe_for(path, validation_fraction=0.1, test_fraction=0.2))
        total = sum(texts.stats["rows"].values())
        assert total == 100, (fmt, texts.stats)
        assert set(texts.train_labels) == {"great", "other"}
        if fmt == "datasets":  # its own test split is used as it is
            assert texts.stats["rows"]["test"] == 20 and "test_split_from_train" not in texts.stats["cleaning"]


def test_folder_with_split_files_and_stratified_split(tmp_path):
    d = tmp_path / "f"
    d.mkdir()
    write_jsonl(d / "train.jsonl", make_reviews(300, 1))
    write_jsonl(d / "test.jsonl", make_reviews(30, 2))
    a = load_texts(recipe_for(d, validation_fraction=0.2))
    b = load_texts(recipe_for(d, validation_fraction=0.2))
    assert a.validation == b.validation  # seeded
    assert len(a.test) == 30 and len(a.validation) == 60
    frac_train = a.train_labels.count("other") / len(a.train_labels)
    frac_val = a.validation_labels.count("other") / len(a.validation_labels)
    assert abs(frac_train - frac_val) < 0.02  # stratified
    c = load_texts(recipe_for(d, validation_fraction=0.2, split_seed=5))
    assert c.validation != a.validation


def test_cleaning_counts(tmp_path):
    rows = [{"text": "Good<br />stuff &amp; more", "label": "a"}, {"text": "  spaced \n\t out ", "label": "b"},
            {"text": "dup", "label": "a"}, {"text": "dup", "label": "a"}, {"text": "   ", "label": "b"},
            {"text": "<br /><br />", "label": "b"}, {"text": "in test too", "label": "a"}] + \
           [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(20)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", [{"text": "in test too", "label": "a"}, {"text": "t", "label": "b"}])
    t = load_texts(recipe_for(tmp_path, validation_fraction=0.0))
    assert "Good stuff & more" in t.train and "spaced out" in t.train
    c = t.stats["cleaning"]
    assert c["duplicates_dropped"] == 1 and c["empty_dropped_train"] == 2 and c["html_cleaned"] == 2
    # the default overlap policy keeps the training row and drops the test row that repeats it
    assert c["overlap_with_train_test"] == 1 and c["overlap_dropped_test"] == 1
    assert "in test too" in t.train and t.test == ["t"]


@pytest.mark.parametrize("overlap", ["drop_test", "drop_train", "keep"])
def test_repeated_and_conflicting_texts_and_the_overlap_policy(tmp_path, overlap):
    """The issue's case: short texts that legitimately repeat under different labels ("Untitled") are kept once per
    label and counted; exact (text, label) repeats are dropped; a test text that is also in train is dropped from
    test (drop_test), from train (drop_train) or only counted (keep)."""
    rows = [{"text": "Untitled", "label": "a"}, {"text": "Untitled", "label": "b"}, {"text": "Untitled", "label": "a"},
            {"text": "[no title]", "label": "b"}] + [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(20)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", [{"text": "Untitled", "label": "b"}, {"text": "new", "label": "a"}])
    t = load_texts(recipe_for(tmp_path, validation_fraction=0.0, clean={"overlap": overlap}))
    c = t.stats["cleaning"]
    assert c["duplicates_dropped"] == 1 and c["conflicting_label_texts"] == 1 and c["conflicting_label_rows"] == 2
    assert c["overlap_with_train_test"] == 1
    pairs = list(zip(t.train, t.train_labels))
    if overlap == "drop_test":
        assert ("Untitled", "a") in pairs and ("Untitled", "b") in pairs and t.test == ["new"]
    elif overlap == "drop_train":
        assert "Untitled" not in t.train and c["overlap_dropped_train"] == 2 and t.test == ["Untitled", "new"]
    else:
        assert ("Untitled", "b") in pairs and t.test == ["Untitled", "new"] and "overlap_dropped_test" not in c


def test_non_utf8_bytes_replaced_or_refused(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(r).encode() for r in make_reviews(40)]
    lines[3] = b'{"text": "caf\xe9 \xff bytes", "label": "great"}'
    path.write_bytes(b"\n".join(lines) + b"\n")
    t = load_texts(recipe_for(path))
    assert t.stats["cleaning"]["decode_replaced"] == 1
    assert any("\ufffd" in x for x in t.train + t.validation + t.test)
    with pytest.raises(DataError, match="invalid UTF-8"):
        load_texts(recipe_for(path, encoding_errors="strict"))


def test_data_edge_cases(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no training texts"):
        load_texts(recipe_for(empty))
    one = write_jsonl(tmp_path / "one.jsonl", [{"text": f"x {i}", "label": "a"} for i in range(10)])
    with pytest.raises(DataError, match="single class"):
        load_texts(recipe_for(one))
    notjson = tmp_path / "nj.jsonl"
    notjson.write_text('{"text": "a", "label": "b"}\n{oops\n')
    with pytest.raises(DataError, match=r"nj.jsonl:2"):
        load_texts(recipe_for(notjson))
    with pytest.raises(RecipeError, match="data.label_column"):
        load_texts(recipe_for(write_jsonl(tmp_path / "nl.jsonl", [{"text": "a"}])))
    with pytest.raises(DataError, match="format"):
        load_texts(recipe_for(tmp_path / "one.jsonl", format="auto") if False else recipe_for(
            _touch(tmp_path / "x.weird")))


def _touch(p: Path) -> Path:
    p.write_text("x")
    return p


def test_unseen_labels(tmp_path):
    d = tmp_path / "u"
    d.mkdir()
    write_jsonl(d / "train.jsonl", make_reviews(60))
    write_jsonl(d / "test.jsonl", make_reviews(10) + [{"text": "new", "label": "surprise"}])
    with pytest.raises(DataError, match="never seen in training"):
        load_texts(recipe_for(d))
    t = load_texts(recipe_for(d, unseen_labels="drop", clean={"overlap": "keep"}))  # test repeats train here
    assert len(t.test) == 10 and t.stats["cleaning"]["unseen_label_dropped_test"] == 1


def test_txt_documents_and_lm_packing(tmp_path, tiny_gpt_dir, austen_text):
    from transformers import AutoTokenizer

    d = tmp_path / "novels"
    d.mkdir()
    (d / "a.txt").write_text(austen_text)
    (d / "b.txt").write_text(austen_text.upper())
    recipe = recipe_for(d, task="causal_lm", block_size=32, validation_fraction=0.1, test_fraction=0.1)
    texts = load_texts(recipe)
    assert len(texts.train) == 2
    bundle = tokenize(texts, AutoTokenizer.from_pretrained(tiny_gpt_dir), recipe)
    assert bundle.train.blocks.shape[1] == 32 and len(bundle.validation) > 0 and len(bundle.test) > 0
    b = bundle.train.collate([0, 1])
    assert b["input_ids"].shape == (2, 32) and bundle.train.count([0, 1]) == (62, 64)


def test_bucketed_batches_are_a_deterministic_partition():
    lengths = [5 + (i * 7919) % 60 for i in range(500)]
    split = ClassificationSplit([[1] * n for n in lengths], [0] * 500, pad_id=0)
    a = split.batches(16, seed=3, epoch=2)
    assert a == split.batches(16, seed=3, epoch=2)
    assert a != split.batches(16, seed=3, epoch=3)
    flat = sorted(i for b in a for i in b)
    assert flat == list(range(500))
    # bucketing pads less than random batches
    pad = lambda bs: sum(max(lengths[i] for i in b) * len(b) for b in bs)  # noqa: E731
    assert pad(a) < 0.8 * pad(split.batches(16, seed=3, epoch=2, bucket=False))
    batch = split.collate(a[0])
    assert batch["attention_mask"].sum() == sum(lengths[i] for i in a[0])
    assert split.count(a[0]) == (len(a[0]), int(batch["attention_mask"].sum()))  # counted without collating


def test_pad_to_multiple_of_rounds_batch_widths_up_to_the_truncation_length():
    split = ClassificationSplit([[1] * n for n in (3, 17, 35, 40)], [0] * 4, pad_id=0, pad_multiple=16, max_width=40)
    assert split.collate([0])["input_ids"].shape == (1, 16)
    assert split.collate([0, 1])["input_ids"].shape == (2, 32)
    batch = split.collate([2])  # 35 → 48, capped at the truncation length
    assert batch["input_ids"].shape == (1, 40) and int(batch["attention_mask"].sum()) == 35
    assert split.count([0, 1]) == (2, 20)  # real tokens, padding not counted
    plain = ClassificationSplit(split.input_ids, split.labels, pad_id=0)
    assert plain.collate([0, 1])["input_ids"].shape == (2, 17)
    lengths = [5 + (i * 7919) % 60 for i in range(500)]
    bucketed = ClassificationSplit([[1] * n for n in lengths], [0] * 500, pad_id=0, pad_multiple=16, max_width=64)
    widths = {bucketed.collate(b)["input_ids"].shape[1] for b in bucketed.batches(16, seed=0)}
    assert widths <= {16, 32, 48, 64}  # few shapes: one static compiled graph each


def test_builtin_fine_foods():
    need_builtin("fine_foods")
    t = load_texts(recipe_for("builtin:fine_foods", text_column="review", label_column="score"))
    assert t.stats["rows_read"] == {"train": 4000, "validation": 0, "test": 1000}
    assert t.label_names == ["great", "other"]
    assert not any("<br" in x for x in t.train)
    assert t.stats["cleaning"]["duplicates_dropped"] > 0


def test_builtin_austen_holds_out_persuasion():
    need_builtin("austen")
    t = load_texts(load_recipe("lm-scratch"))
    assert len(t.train) == 5 and len(t.test) == 1
    assert "Anne Elliot" in t.test[0] and "Anne Elliot" not in " ".join(t.train)


def test_bucketed_batches_are_full_but_the_last_and_cover_every_item_once():
    """Length buckets carry a window's leftovers into the next window: one batch shape per width (static compiles)."""
    import random

    from trainopt.data.batching import BUCKET_WINDOW, ClassificationSplit

    rng = random.Random(0)
    n, bs = 3 * 8 * BUCKET_WINDOW + 5, 8  # three windows and a remainder
    split = ClassificationSplit([[1] * rng.randint(1, 40) for _ in range(n)], [0] * n, pad_id=0)
    batches = split.batches(bs, seed=3, epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert [len(b) for b in batches].count(bs) == len(batches) - 1 and n % bs in [len(b) for b in batches]
    widths = [max(len(split.input_ids[i]) for i in b) for b in batches]
    spreads = [max(len(split.input_ids[i]) for i in b) - min(len(split.input_ids[i]) for i in b) for b in batches]
    assert sum(spreads) / len(spreads) < 6 and len(set(widths)) > 10  # still grouped by length, and shuffled


def test_lm_training_batches_are_full_and_evaluation_keeps_every_block():
    """A partial last batch would make a compiled step compile again: training drops it, evaluation does not."""
    from trainopt.data.batching import LMSplit

    split = LMSplit(torch.arange(13 * 4).view(13, 4))
    train = split.batches(4, seed=0, epoch=0)
    assert [len(b) for b in train] == [4, 4, 4] and len(set(sum(train, []))) == 12
    assert [len(b) for b in split.batches(4, shuffle=False)] == [4, 4, 4, 1]
    assert [len(b) for b in LMSplit(torch.zeros(3, 4, dtype=torch.long)).batches(8)] == [3]  # smaller than a batch


@pytest.mark.parametrize("policy", ["strict", "replace"])
def test_a_lone_surrogate_escape_in_jsonl_is_refused_or_replaced(tmp_path, policy):
    rows = make_reviews(40)
    d = tmp_path / "d"
    d.mkdir()
    write_jsonl(d / "train.jsonl", rows)
    with open(d / "train.jsonl", "a") as f:
        f.write('{"text": "bad \\ud800 text", "label": "positive"}\n')
    recipe = load_recipe({"name": "t", "model": {"path": "x"}, "stages": [{"kind": "train"}],
                          "data": {"source": str(d), "encoding_errors": policy}})
    if policy == "strict":
        with pytest.raises(DataError, match="lone surrogate"):
            load_texts(recipe)
    else:
        texts = load_texts(recipe)
        assert any("bad \ufffd text" == t for t in texts.train + (texts.test or [])), "replaced, not dropped"


def test_deeply_nested_json_line_is_a_data_error(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "train.jsonl").write_text('{"text": ' + "[" * 100000 + "]" * 100000 + '}\n')
    recipe = load_recipe({"name": "t", "model": {"path": "x"}, "stages": [{"kind": "train"}],
                          "data": {"source": str(d)}})
    with pytest.raises(DataError, match="nested too deeply"):
        load_texts(recipe)


def test_a_folder_mixing_split_files_and_other_names_is_refused(tmp_path):
    """train.jsonl + tset.jsonl (a typo): the misspelt test file would silently become training data."""
    d = tmp_path / "d"
    d.mkdir()
    write_jsonl(d / "train.jsonl", make_reviews(30))
    write_jsonl(d / "tset.jsonl", make_reviews(10, seed=1))
    recipe = load_recipe({"name": "t", "model": {"path": "x"}, "stages": [{"kind": "train"}],
                          "data": {"source": str(d)}})
    with pytest.raises(DataError, match="tset.jsonl"):
        load_texts(recipe)
    (d / "train.jsonl").rename(d / "part1.jsonl")  # no split names at all: every file is training data
    assert len(load_texts(recipe).train) > 0


def _folder(tmp_path, rows):
    d = tmp_path / "d"
    d.mkdir(exist_ok=True)
    write_jsonl(d / "data.jsonl", rows)
    return load_recipe({"name": "t", "model": {"path": "x"}, "stages": [{"kind": "train"}],
                        "data": {"source": str(d)}})


def test_labels_of_mixed_kinds_and_texts_that_are_not_strings_are_refused(tmp_path):
    """JSON's 1, "1" and true would be separate (or accidentally merged) classes; a list as text would train on its
    Python spelling."""
    rows = make_reviews(40)
    rows[3]["label"], rows[4]["label"] = 1, True
    with pytest.raises(DataError, match="mixes kinds of values"):
        load_texts(_folder(tmp_path, rows))
    rows = make_reviews(40)
    rows[5]["text"] = ["a", "list"]
    with pytest.raises(DataError, match="holds a list in the text column"):
        load_texts(_folder(tmp_path, rows))
    numbers = [{"text": r["text"], "label": i % 2} for i, r in enumerate(make_reviews(40))]
    numbers[0]["label"] = 1.0  # an integer written as a float is still a number
    assert len(load_texts(_folder(tmp_path, numbers)).label_names) == 2


def test_a_split_asked_for_by_a_fraction_must_hold_rows(tmp_path):
    rows = make_reviews(2)
    recipe = _folder(tmp_path, rows)
    with pytest.raises(RecipeError, match="data.test_fraction"):
        load_texts(recipe)
