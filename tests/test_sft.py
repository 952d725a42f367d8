"""Supervised fine-tuning data (data/sft.py, data/definitions.py): the loss falls on the responses only, packed
examples never attend to each other, splits keep groups whole, and bad SFT recipes are refused before work."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from trainopt.cli import main
from trainopt.data import sft
from trainopt.data.batching import SFTSplit
from trainopt.evaluate import evaluate, lm_loss_sum, model_inputs
from trainopt.recipe import Recipe

from .conftest import need_builtin, sft_recipe, write_jsonl


@pytest.fixture(scope="module")
def chat(tiny_chat_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_chat_llama_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_chat_llama_dir), attn_implementation="sdpa").eval()
    return tok, model


CONVS = [[{"role": "user", "content": "What is tea?"}, {"role": "assistant", "content": "tea is a plain word."}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is bad 3?"},
          {"role": "assistant", "content": "bad is a bad word."}, {"role": "user", "content": "And good?"},
          {"role": "assistant", "content": "good is a good word."}]]


@pytest.mark.parametrize("chat_template", [True, False])
def test_only_response_tokens_are_targets(chat, chat_template):
    tok, _ = chat
    (ids, labels), (ids2, labels2) = sft.encode(CONVS, tok, chat_template, "response")
    trained = tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
    end = "<|im_end|>\n" if chat_template else tok.eos_token
    assert trained.replace(" ", "") == ("tea is a plain word." + end).replace(" ", "")
    # a multi-turn conversation trains on both assistant turns, never on the system or user turns
    trained2 = tok.decode([t for t, lab in zip(ids2, labels2) if lab != -100]).replace(" ", "")
    assert "badisabadword." in trained2 and "goodisagoodword." in trained2
    assert "Bebrief" not in trained2 and "Andgood" not in trained2 and "What" not in trained2
    assert labels[0] == -100
    every = sft.encode(CONVS[:1], tok, chat_template, "all")[0][1]
    assert every[1:] == ids[1:] and every[0] == -100  # loss_on: all: every token but the first


def test_packed_examples_never_attend_to_each_other(chat):
    tok, model = chat
    examples = sft.encode(CONVS + CONVS[:1], tok, True, "response")
    width = sum(len(ids) for ids, _ in examples) + 5
    rows = sft.pack(examples, width, True, Counter(), seed=0)
    assert len(rows) == 1 and len(rows[0]) == 3  # all three fit one row, with padding after them
    split = SFTSplit(rows, width, tok.pad_token_id, packed=True)
    batch = split.collate([0])
    assert "attention_mask" not in batch
    with torch.inference_mode():
        packed = model(**model_inputs(batch)).logits[0]
        at = 0
        for ids, _ in rows[0]:
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            torch.testing.assert_close(packed[at: at + len(ids)], alone, atol=1e-5, rtol=1e-5)
            at += len(ids)
    # the evaluated loss is the mean over response tokens of the examples run one by one
    with torch.inference_mode():
        total = sum(lm_loss_sum(model(input_ids=torch.tensor([ids])).logits, torch.tensor([lab])).item()
                    for ids, lab in rows[0])
    count = sum(sum(x != -100 for x in lab[1:]) for _, lab in rows[0])
    assert split.count([0])[0] == count
    got = evaluate(model, split, "causal_lm", 4, torch.device("cpu"))
    assert got["tokens"] == count and got["loss"] == pytest.approx(total / count, rel=1e-4)


def test_unpacked_rows_are_padded_per_batch_with_a_mask(chat):
    tok, model = chat
    rows = sft.pack(sft.encode(CONVS, tok, True, "response"), 128, False, Counter(), seed=0)
    split = SFTSplit(rows, 128, tok.pad_token_id, packed=False)
    batch = split.collate([0, 1])
    assert batch["input_ids"].shape[1] == max(split.lengths) and batch["attention_mask"].sum() == sum(split.lengths)
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_a_system_message_goes_first():
    from trainopt.recipe import DataSpec

    spec = DataSpec(sft={"system": "Be brief."})
    (conv,) = sft.conversations([{"prompt": " q ", "response": "a"}], spec, "train")
    assert conv == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"}]


def test_long_examples_are_cut_and_counted():
    counts = Counter()
    rows = sft.pack([([1] * 10, [-100] * 5 + [1] * 5), ([2] * 10, [-100] * 9 + [2])], 6, True, counts, 0)
    assert counts == {"truncated": 2, "no_target_left_dropped": 1}
    assert [len(ids) for r in rows for ids, _ in r] == [6]


def test_group_split_keeps_groups_whole():
    groups = [i % 17 for i in range(400)]
    keep, held = sft.split_groups(400, groups, 0.2, seed=3)
    assert sorted(keep + held) == list(range(400)) and abs(len(held) - 80) <= 24
    assert not {groups[i] for i in keep} & {groups[i] for i in held}


def test_builtin_definitions_split_by_synset():
    need_builtin("wordnet")
    from trainopt.data.prepare import load_texts

    recipe = Recipe.model_validate({"task": "causal_lm", "model": {"path": "builtin:smollm2-135m"},
                                    "data": {"source": "builtin:definitions", "sft": {}, "max_train_examples": 500},
                                    "stages": [{"kind": "eval"}]})
    texts = load_texts(recipe)
    assert texts.sft and texts.stats["group_column"] == "synset" and len(texts.train) == 500
    answers = lambda convs: {c[-1]["content"] for c in convs}  # noqa: E731
    assert not answers(texts.train) & answers(texts.test)  # one gloss never on both sides
    q = texts.test[0][0]["content"]
    assert q.startswith("What does the ") and q.endswith(" mean?")


def test_messages_column_and_sft_run(tmp_path, tiny_chat_llama_dir):
    data = tmp_path / "chat"
    data.mkdir()
    rows = [{"messages": c} for c in CONVS * 40]
    for i, r in enumerate(rows):  # distinct conversations (duplicates are dropped)
        r["messages"] = [dict(m, content=f"{m['content']} {i}") for m in r["messages"]]
    write_jsonl(data / "train.jsonl", rows)
    raw = sft_recipe(tiny_chat_llama_dir, data, max_steps=2)
    raw["data"]["sft"] = {"messages_column": "messages"}
    raw["data"]["test_fraction"] = 0.2
    raw["stages"] = [{"kind": "train", "name": "full", "max_steps": 2, "batch_size": 2, "log_every": 1,
                      "checkpoint_every": 0}]
    from trainopt.runner import run

    report = run(raw, out=tmp_path / "run", show_summary=False)
    stats = json.loads((tmp_path / "run" / "data.json").read_text())
    assert stats["template"] == "chat" and stats["examples"]["train"] + stats["examples"]["validation"] + \
        stats["examples"]["test"] == 80
    entry = report["stages"][0]
    assert entry["quality"]["perplexity"] > 1 and len(entry["samples"]) == 2
    assert entry["training"]["tokens_seen"] > 0


@pytest.mark.parametrize("change, key", [
    ({"task": "classification"}, "data.sft"),
    ({"stage": {"attention": "sdpa_causal"}}, "stages.0.attention"),
    ({"sft": {"prompt_column": "question"}}, "data.sft.prompt_column"),
    ({"sft": {"template": "bogus"}}, "data.sft.template"),
])
def test_bad_sft_recipes_are_refused_before_work(tmp_path, tiny_chat_llama_dir, definitions_dir, capsys, change, key):
    import yaml

    raw = sft_recipe(tiny_chat_llama_dir, definitions_dir, **change.get("stage", {}))
    raw["task"] = change.get("task", raw["task"])
    raw["data"]["sft"].update(change.get("sft", {}))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "never"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert key in err and len(err.splitlines()) == 1, err
    assert not out.exists()
