"""Shared fixtures: tiny models built in the test, small data files, and the fetched demo data sets."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from .postgres import postgres_server  # noqa: F401  (a fixture: a private PostgreSQL server for the tune tests)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

POS = ["great", "delicious", "love", "excellent", "tasty", "perfect", "wonderful", "fresh"]
NEG = ["awful", "stale", "bad", "terrible", "bland", "broken", "disgusting", "waste"]
FILL = ["the", "coffee", "tea", "snack", "was", "really", "very", "box", "price", "taste", "this", "it"]


def make_reviews(n: int, seed: int = 0) -> list[dict]:
    """A learnable two-class set: the label follows the sentiment words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "great" if i % 3 else "other"
        words = rng.sample(FILL, 5) + rng.sample(POS if label == "great" else NEG, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words) + f" {i}", "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from trainopt.assets import minilm_path

    return AutoTokenizer.from_pretrained(str(minilm_path()))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_tokenizer) -> Path:
    """A 2-layer, hidden-32 BERT with MiniLM's tokenizer, saved as a plain HF folder."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    path = tmp_path_factory.mktemp("tiny_bert")
    BertForSequenceClassification(cfg).save_pretrained(path)
    minilm_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def austen_text() -> str:
    return ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be "
            "in want of a wife. However little known the feelings or views of such a man may be on his first "
            "entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families. ") * 30


@pytest.fixture(scope="session")
def tiny_gpt_dir(tmp_path_factory, austen_text) -> Path:
    """A 2-layer, hidden-32 GPT-2 with a BPE tokenizer trained in the test."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from trainopt.models import train_bpe_tokenizer

    tok = train_bpe_tokenizer([austen_text], vocab_size=300)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_layer=2, n_head=2, n_embd=32, n_positions=128,
                     eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    path = tmp_path_factory.mktemp("tiny_gpt")
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def reviews_dir(tmp_path) -> Path:
    d = tmp_path / "reviews"
    d.mkdir()
    write_jsonl(d / "train.jsonl", make_reviews(240, seed=1))
    write_jsonl(d / "test.jsonl", make_reviews(60, seed=2))
    return d


def classification_recipe(model_dir: Path, data: Path, **stage) -> dict:
    """A small, fast classification recipe as a dict."""
    train = {"kind": "train", "name": "finetune", "epochs": 2, "batch_size": 16,
             "optimizer": {"lr": 1e-3}, "eval_every": 10, "checkpoint_every": 5, "log_every": 5}
    train.update(stage)
    return {"name": "tiny", "task": "classification", "model": {"path": str(model_dir)},
            "data": {"source": str(data), "max_length": 32},
            "stages": [train], "run": {"seed": 0, "progress": False, "tensorboard": True},
            "measure": {"batch_sizes": [1, 8], "repeats": 3, "warmup": 1, "max_seconds": 1}}


def need_builtin(name: str) -> Path:
    """The fetched built-in data set; in CI a missing one fails (make test fetches it), elsewhere it skips."""
    from trainopt import assets
    from trainopt.errors import AssetError

    try:
        return assets.asset_path(name)
    except AssetError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def make_definitions(n: int, seed: int = 0) -> list[dict]:
    """A learnable prompt/response set: the answer is a fixed function of the word."""
    rng = random.Random(seed)
    words = FILL + POS + NEG
    rows = []
    for i in range(n):
        w = rng.choice(words)
        kind = "good" if w in POS else "bad" if w in NEG else "plain"
        rows.append({"prompt": f"What is {w} {i % 7}?", "response": f"{w} is a {kind} word.", "group": w})
    return rows


@pytest.fixture(scope="session")
def tiny_chat_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 Llama with a BPE tokenizer trained in the test and a ChatML chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainopt.models import train_bpe_tokenizer

    texts = [f"{r['prompt']} {r['response']}" for r in make_definitions(200)] + ["<|im_start|>user\n<|im_end|>\n"]
    tok = train_bpe_tokenizer(texts, vocab_size=320)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_definitions(root: Path) -> Path:
    """A folder with train/test jsonl files of make_definitions rows."""
    d = root / "defs"
    d.mkdir()
    write_jsonl(d / "train.jsonl", make_definitions(240, seed=1))
    write_jsonl(d / "test.jsonl", make_definitions(40, seed=2))
    return d


def lora_runs(root: Path, model_dir: Path, **stage) -> dict:
    """{merge: (run dir, report)} of a base eval stage then an SFT + LoRA stage, with merge true and false."""
    from trainopt.runner import run

    data = write_definitions(root)
    out = {}
    for merge in (True, False):
        raw = sft_recipe(model_dir, data, merge=merge, **stage)
        raw["stages"].insert(0, {"kind": "eval", "name": "base"})
        out[merge] = (root / f"merge-{merge}", run(raw, out=root / f"merge-{merge}", show_summary=False))
    return out


@pytest.fixture
def definitions_dir(tmp_path) -> Path:
    return write_definitions(tmp_path)


def sft_recipe(model_dir: Path, data: Path, **stage) -> dict:
    """A small, fast SFT + LoRA recipe as a dict."""
    lora = {"kind": "lora", "name": "lora", "rank": 4, "alpha": 8, "max_steps": 6, "batch_size": 4,
            "optimizer": {"lr": 3e-3}, "eval_every": 3, "checkpoint_every": 3, "log_every": 1}
    lora.update(stage)
    return {"name": "tiny-sft", "task": "causal_lm", "model": {"path": str(model_dir)},
            "data": {"source": str(data), "sft": {}, "block_size": 64, "validation_fraction": 0.1},
            "stages": [lora], "run": {"seed": 0, "progress": False, "tensorboard": False},
            "measure": {"batch_sizes": [1], "repeats": 3, "warmup": 1, "max_seconds": 1, "generate_tokens": 4,
                        "samples": 2}}
