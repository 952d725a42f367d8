"""The classical baseline row (classical.py) on its own: chosen on validation, capped on large splits."""

from __future__ import annotations

from trainopt import classical
from trainopt.data.prepare import TextData
from trainopt.recipe import load_recipe

from .conftest import make_reviews


def _texts(n: int) -> TextData:
    rows = make_reviews(n, seed=3)
    test = make_reviews(60, seed=4)
    return TextData(task="classification", train=[r["text"] for r in rows], validation=None,
                    test=[r["text"] for r in test], train_labels=[r["label"] for r in rows],
                    test_labels=[r["label"] for r in test], label_names=["great", "other"])


def test_classical_row_learns_the_sentiment_words_and_caps_large_splits(monkeypatch):
    recipe = load_recipe({"model": {"path": "builtin:minilm-l6"}, "stages": [{"kind": "eval"}],
                          "measure": {"latency": False}})
    entry = classical.classical_baseline(_texts(300), None, recipe)
    assert entry["quality"]["accuracy"] >= 0.9  # the label follows the sentiment words: a linear model finds them
    assert entry["settings"]["chosen_on"].startswith("last 10% of train") and entry["settings"]["training_rows"] == 300
    assert entry["speed"] == {} and entry["size"]["disk_bytes"] > 0
    monkeypatch.setattr(classical, "MAX_ROWS", 120)
    capped = classical.classical_baseline(_texts(300), None, recipe)
    assert capped["settings"]["training_rows"] == 120
    assert classical.versus({"f1_macro": 0.5}, entry, "classification")["beats"] is False
