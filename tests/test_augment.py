"""Augmentation: the WordNet reader (a tiny database written here, and the real one), EDA operations,
filters and statistics, and the augment stage in a run (cache reused on resume)."""

from __future__ import annotations

import json
import random

import pytest

from trainopt.data.augment.stage import augment_texts, word_edit_distance
from trainopt.data.augment import eda
from trainopt.data.augment.wordnet import WordNet
from trainopt.errors import RecipeError
from trainopt.recipe import AugmentStage, load_recipe

from .conftest import classification_recipe, make_reviews, need_builtin, write_jsonl

LICENCE = "  1 This software and database is being provided to you, the LICENSEE\n"


def write_wordnet(root, synsets: dict[str, list[list[str]]]):
    """A WordNet database in the real file format: synsets per part of speech, as lists of words."""
    root.mkdir()
    for pos, letter in (("noun", "n"), ("verb", "v"), ("adj", "a"), ("adv", "r")):
        data, index = LICENCE, {}
        for words in synsets.get(pos, []):
            offset = len(data.encode("latin-1"))
            line = f"{offset:08d} 00 {letter} {len(words):02x} " + " ".join(f"{w.replace(' ', '_')} 0" for w in words)
            data += line + " 000 | gloss\n"
            for w in words:
                index.setdefault(w.lower().replace(" ", "_"), []).append(offset)
        (root / f"data.{pos}").write_text(data, encoding="latin-1")
        lines = [f"{lemma} {letter} {len(offs)} 0 {len(offs)} {len(offs)} " + " ".join(f"{o:08d}" for o in offs)
                 for lemma, offs in sorted(index.items())]
        (root / f"index.{pos}").write_text(LICENCE + "\n".join(lines) + "\n", encoding="latin-1")
    (root / "verb.exc").write_text("bought buy\n")
    return root


def test_wordnet_reader_on_a_tiny_database(tmp_path):
    wn = WordNet(write_wordnet(tmp_path / "wn", {
        "adj": [["tasty", "delicious", "yummy"], ["great", "outstanding"]],
        "noun": [["box", "case"], ["coffee", "java"]],
        "verb": [["buy", "purchase"]]}))
    assert wn.synonyms("tasty") == ["delicious", "yummy"]
    assert wn.synonyms("boxes") == ["case"]  # morphy: boxes -> box
    assert wn.synonyms("bought") == ["purchase"]  # the exception list
    assert wn.best_pos("coffee") == "noun" and wn.synonyms("unknownword") == []
    with pytest.raises(Exception, match="trainopt data fetch --only wordnet"):
        WordNet(tmp_path / "missing")


def test_real_wordnet_synonyms():
    from trainopt import assets

    need_builtin("wordnet")
    wn = WordNet(assets.asset_path("wordnet"))
    assert "delectable" in wn.synonyms("delicious")
    assert "purchase" in wn.synonyms("bought")
    assert wn.best_pos("quickly") == "adv"


def _syn(word):
    return {"coffee": ("java",), "tasty": ("delicious",), "great": ("outstanding",)}.get(word.lower(), ())


def test_eda_operations():
    text = "The coffee was really tasty, and the price was great."
    rng = random.Random(0)
    sr = eda.apply("synonym", text, 0.3, _syn, rng)
    assert sr != text and "The " in sr and ("java" in sr or "delicious," in sr or "outstanding." in sr)
    assert eda.apply("synonym", "the was and", 1.0, lambda w: ("X",), random.Random(0)) == "the was and"
    swapped = eda.apply("swap", text, 0.2, _syn, random.Random(1))
    assert sorted(swapped.split()) == sorted(text.split()) and swapped != text
    deleted = eda.apply("delete", text, 0.3, _syn, random.Random(2))
    assert 0 < len(deleted.split()) < len(text.split())
    assert eda.apply("delete", "word", 0.9, _syn, random.Random(0)) == "word"
    inserted = eda.apply("insert", text, 0.1, _syn, random.Random(3))
    assert len(inserted.split()) == len(text.split()) + 1
    assert eda.apply("swap", text, 0.2, _syn, random.Random(7)) == eda.apply("swap", text, 0.2, _syn, random.Random(7))


def test_augment_texts_filters_and_counts():
    assert word_edit_distance("a b c".split(), "a x c d".split()) == 2
    texts = ["The coffee was really tasty today.", "Great price for a great box.", "ok"]
    stage = AugmentStage(kind="augment", per_example=4)
    new, labels, sources, stats = augment_texts(texts, ["great", "great", "other"], stage, _syn, seed=0)
    assert len(new) == len(labels) == len(sources) == stats["added"] == sum(stats["per_operation"].values())
    assert not set(new) & set(texts) and len(set(new)) == len(new)
    assert all(labels[i] == ["great", "great", "other"][sources[i]] for i in range(len(new)))
    assert stats["dropped"]["identical"] + stats["dropped"]["duplicate"] + len(new) == 12
    assert stats["mean_word_edit_distance"] > 0
    again = augment_texts(texts, ["great", "great", "other"], stage, _syn, seed=0)
    assert again[0] == new  # seeded: the same set
    assert augment_texts(texts, ["great"] * 3, stage, _syn, seed=1)[0] != new


def test_recipe_validation():
    base = {"model": {"path": "x"}}
    with pytest.raises(RecipeError, match="not a model"):
        load_recipe({**base, "stages": [{"kind": "train", "name": "t"},
                                        {"kind": "augment", "from_stage": "t"}]})
    with pytest.raises(RecipeError, match="at least one operation"):
        load_recipe({**base, "stages": [{"kind": "augment", "eda": {"synonym": 0, "insert": 0, "swap": 0,
                                                                     "delete": 0}}]})


def test_augment_stage_in_a_run(tmp_path, tiny_bert_dir):
    import trainopt

    need_builtin("wordnet")
    data = write_jsonl(tmp_path / "reviews.jsonl", make_reviews(120, seed=4))
    raw = classification_recipe(tiny_bert_dir, data, epochs=1)
    raw["stages"] = [{"kind": "augment", "name": "eda", "per_example": 2}] + raw["stages"]
    report = trainopt.run(raw, out=tmp_path / "run")
    (aug,) = report["augmentation"]
    train = report["stages"][0]
    assert aug["added"] > 0 and aug["train_rows"] == aug["originals"] + aug["added"]
    assert train["training"]["train_examples"] == aug["train_rows"] and train["effect"] == "baseline"
    assert report["data"]["rows"]["train"] == aug["originals"]
    # a typed result: the report entry and stage.json read back as an AugmentResult without losing a key
    from trainopt.results import AugmentResult

    typed = AugmentResult.from_json(aug)
    assert typed.to_json() == aug and typed.details["seed"] == raw["run"]["seed"] and typed.cached is False
    assert json.loads((tmp_path / "run" / "stages" / "eda" / "stage.json").read_text()) == aug
    assert "## Augmentation `eda`" in (tmp_path / "run" / "report.md").read_text()
    rows = (tmp_path / "run" / "stages" / "eda" / "augmented.jsonl").read_text().splitlines()
    assert len(rows) == aug["added"] and {"text", "label", "source"} <= json.loads(rows[0]).keys()
    again = trainopt.run(raw, out=tmp_path / "run", resume=True)
    assert again["augmentation"][0]["cached"] is True and again["augmentation"][0]["added"] == aug["added"]


def test_augment_refused_for_language_modelling(tmp_path, tiny_gpt_dir, austen_text):
    import trainopt

    (tmp_path / "book.txt").write_text(austen_text)
    raw = {"task": "causal_lm", "model": {"path": str(tiny_gpt_dir)}, "data": {"source": str(tmp_path / "book.txt")},
           "stages": [{"kind": "augment"}, {"kind": "eval", "name": "e"}]}
    with pytest.raises(RecipeError, match="classification"):
        trainopt.run(raw, out=tmp_path / "lm")
    assert not (tmp_path / "lm").exists()


def test_augment_command_writes_jsonl(tmp_path, capsys):
    from trainopt.cli import main

    need_builtin("wordnet")
    data = write_jsonl(tmp_path / "reviews.jsonl", make_reviews(30, seed=5))
    out = tmp_path / "aug.jsonl"
    assert main(["augment", "--out", str(out), "--per-example", "2", "--set", f"data.source={data}",
                 "--set", "data.text_column=text", "--set", "data.label_column=label"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    originals = [r for r in rows if r["source"] == -1]
    assert len(originals) < len(rows) and all(r["label"] == originals[r["source"]]["label"] for r in rows
                                               if r["source"] >= 0)
    assert "augmented" in capsys.readouterr().out
    assert main(["augment", "--out", str(tmp_path / "new.jsonl"), "--rates", "0,0,0,0", "--set",
                 f"data.source={data}", "--set", "data.text_column=text", "--set", "data.label_column=label"]) == 2
    assert not (tmp_path / "new.jsonl").exists()


def test_augment_never_writes_over_its_own_data_or_an_existing_file_unasked(tmp_path, capsys):
    """Checked before any work: the recipe's own data file (even with --overwrite), a folder, an existing file
    without --overwrite — each one line, status 2, the file untouched."""
    from trainopt.cli import main

    data = write_jsonl(tmp_path / "reviews.jsonl", make_reviews(30, seed=5))
    before = data.read_bytes()
    keys = ["--set", f"data.source={data}", "--set", "data.text_column=text", "--set", "data.label_column=label"]
    other = tmp_path / "other.jsonl"
    other.write_text("mine\n")
    for out, extra, words in ((data, ["--overwrite"], "one of the recipe's data files"),
                              (tmp_path, [], "is a folder"), (other, [], "exists")):
        assert main(["augment", "--out", str(out), *extra, *keys]) == 2
        assert words in capsys.readouterr().err
    assert data.read_bytes() == before and other.read_text() == "mine\n"


class ReverseEngine:
    """A stand-in translation engine: 'forward' reverses the words, 'back' reverses them again and adds 'indeed'."""

    def translate(self, texts, direction):
        return [" ".join(reversed(t.split())) + (" indeed" if direction == "back" else "") for t in texts]


def test_backtranslation_joins_eda_and_is_counted():
    stage = AugmentStage(kind="augment", per_example=1, backtranslate={"batch_size": 2})
    texts = ["The coffee was tasty.", "Great price.", "ok"]
    new, labels, sources, stats = augment_texts(texts, ["a", "b", "c"], stage, _syn, seed=0, engine=ReverseEngine())
    assert stats["per_operation"]["backtranslate"] == 3 and "The coffee was tasty. indeed" in new
    assert stats["backtranslate"]["texts_per_s_round_trip"] > 0
    only_bt = AugmentStage(kind="augment", per_example=0, backtranslate={})
    new, *_ = augment_texts(texts, ["a", "b", "c"], only_bt, None, seed=0, engine=ReverseEngine())
    assert len(new) == 3
    with pytest.raises(RecipeError, match="per_example > 0"):
        load_recipe({"model": {"path": "x"}, "stages": [{"kind": "augment", "per_example": 0}]})


def test_apertium_round_trip():
    from trainopt import assets
    from trainopt.data.augment.backtranslate import ApertiumEngine, EngineError, back_translate

    need_builtin("apertium")
    engine = ApertiumEngine(assets.asset_path("apertium"))
    texts = ["The coffee was really tasty, and the price was great.", "I would not buy this again.",
             "Stale [old] chips\nin a torn bag"]
    spanish = engine.translate(texts, "forward")
    assert len(spanish) == 3 and "café" in spanish[0].lower()
    back = back_translate(texts, engine, batch_size=2)
    assert len(back) == 3 and all(b.strip() for b in back) and "coffee" in back[0].lower()
    with pytest.raises(EngineError, match="trainopt data fetch --only apertium"):
        ApertiumEngine(assets.cache_dir() / "nowhere")


def test_augmentation_at_distillation_time(tmp_path, tiny_bert_dir):
    """fine-tune on the originals, then augment, then distil: only the student sees the augmented split, and the
    cached teacher logits cover it."""
    import trainopt

    need_builtin("wordnet")
    data = write_jsonl(tmp_path / "reviews.jsonl", make_reviews(100, seed=6))
    raw = classification_recipe(tiny_bert_dir, data, epochs=1)
    raw["stages"] += [{"kind": "augment", "name": "eda", "per_example": 2},
                      {"kind": "distill", "name": "student", "student": {"num_layers": 1},
                       "train": {"epochs": 1, "batch_size": 16, "optimizer": {"lr": 1e-3}}}]
    report = trainopt.run(raw, out=tmp_path / "run")
    finetune, student = report["stages"]
    aug = report["augmentation"][0]
    assert finetune["training"]["train_examples"] == aug["originals"]
    assert student["training"]["train_examples"] == aug["train_rows"] > aug["originals"]
    assert student["distillation"]["teacher_logits_cached"] is True


def test_contextual_replacement_by_embedding_neighbours_and_a_tiny_mlm(tmp_path, minilm_tokenizer):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from trainopt.data.augment.contextual import EmbeddingNeighbours, MaskedLM

    vocab = minilm_tokenizer.get_vocab()
    torch.manual_seed(0)
    emb = torch.randn(len(vocab), 16)
    emb[vocab["delicious"]] = emb[vocab["good"]] + 0.01 * torch.randn(16)  # the nearest word to "good"
    near = EmbeddingNeighbours(minilm_tokenizer, emb, top_k=1)
    assert near.neighbours("good") == ["delicious"]
    out = near.augment(["The was Good!"], 1.0, [random.Random(0)])[0]
    assert out == "The was Delicious!"  # case and punctuation kept, stop words untouched

    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64)).eval()
    model = MaskedLM(minilm_tokenizer, mlm, top_k=3, batch_size=2)
    texts = ["The coffee was really tasty today.", "Stale chips in a torn bag.", "Great price."]
    a = model.augment(texts, 0.3, [random.Random(i) for i in range(3)])
    b = model.augment(texts, 0.3, [random.Random(i) for i in range(3)])
    assert a == b and len(a) == 3 and sum(x != y for x, y in zip(a, texts)) >= 2
    for new, old in zip(a, texts):
        assert len(new.split()) == len(old.split())  # words replaced one for one
        for w_new, w_old in zip(new.split(), old.split()):
            if w_new != w_old:
                assert w_new.strip(".!,").lower() in model.word_ids


def test_contextual_stage_uses_the_run_models_embeddings(tmp_path, tiny_bert_dir):
    import trainopt

    data = write_jsonl(tmp_path / "reviews.jsonl", make_reviews(60, seed=7))
    raw = classification_recipe(tiny_bert_dir, data, epochs=1)
    raw["stages"] = [{"kind": "augment", "name": "ctx", "per_example": 0, "contextual": {"rate": 0.3}}] + raw["stages"]
    report = trainopt.run(raw, out=tmp_path / "run")
    aug = report["augmentation"][0]
    assert aug["per_operation"] == {"contextual": aug["added"]} and aug["added"] > 0
    with pytest.raises(RecipeError, match="needs contextual.model"):
        load_recipe({"model": {"path": "x"}, "stages": [{"kind": "augment", "contextual": {"source": "mlm"}}]})


def _tiny_marian(path, texts):
    """A randomly initialised 1-layer MarianMT model with a BPE tokenizer trained here, saved as a HF folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = MarianConfig(vocab_size=len(fast), d_model=16, encoder_layers=1, decoder_layers=1,
                       encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                       max_position_embeddings=64, pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id,
                       decoder_start_token_id=fast.pad_token_id, forced_eos_token_id=fast.eos_token_id)
    MarianMTModel(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_marian_engine_loads_and_generates(tmp_path, tiny_bert_dir):
    import trainopt
    from trainopt.data.augment.backtranslate import EngineError, Seq2SeqEngine

    rows = make_reviews(40, seed=8)
    marian = _tiny_marian(tmp_path / "marian", [r["text"] for r in rows])
    engine = Seq2SeqEngine(str(marian), str(marian), max_new_tokens=6, device="cpu")
    out = engine.translate(["the coffee was great", "stale box"], "forward")
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    with pytest.raises(EngineError, match="cannot load the forward translation model"):
        Seq2SeqEngine(str(tmp_path), str(marian))

    data = write_jsonl(tmp_path / "reviews.jsonl", rows)
    raw = classification_recipe(tiny_bert_dir, data, epochs=1)
    raw["stages"] = [{"kind": "augment", "name": "bt", "per_example": 0,
                      "backtranslate": {"engine": "marian", "forward_model": str(marian), "back_model": str(marian),
                                        "max_new_tokens": 8, "batch_size": 16}}] + raw["stages"]
    report = trainopt.run(raw, out=tmp_path / "run")
    aug = report["augmentation"][0]
    assert aug["backtranslate"]["engine"] == "marian" and "backtranslate" in aug["per_operation"]
    with pytest.raises(RecipeError, match="forward_model"):
        load_recipe({"model": {"path": "x"}, "stages": [{"kind": "augment", "backtranslate": {"engine": "marian"}}]})
