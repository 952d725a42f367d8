"""Every saved folder loads correctly in plain transformers, or refuses: a structurally pruned model (per-layer heads
and FFN widths) rebuilds exactly through the code shipped in its folder (trust_remote_code=True) and is refused
without it; a quantized folder is refused both ways, never loaded with re-initialised weights."""

from __future__ import annotations

import json
import stat

import pytest
import torch

from trainopt.artifacts import load_saved, save_model
from trainopt.compress.prune.structured import apply_plan
from trainopt.compress.quantize import dynamic

IDS = torch.tensor([[101, 2023, 2001, 2307, 102], [101, 2204, 102, 0, 0]])
MASK = (IDS != 0).long()


def _bert(tok, seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


@pytest.fixture
def pruned(tmp_path, minilm_tokenizer):
    model = _bert(minilm_tokenizer)
    apply_plan(model, {"heads": [[0, 2, 3], [1]], "ffn": [list(range(0, 64, 2)), list(range(40))]})
    return model, save_model(model, minilm_tokenizer, tmp_path / "pruned", {"task": "classification"})


def test_a_pruned_folder_loads_in_plain_transformers_with_its_own_code_and_is_refused_without(pruned):
    from transformers import AutoModelForSequenceClassification, pipeline

    model, folder = pruned
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForSequenceClassification.from_pretrained(folder)
    plain = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    assert torch.equal(_logits(plain), _logits(model))
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in model.parameters())  # the real shapes
    ours, _, _ = load_saved(folder)  # trainopt's own loader needs no remote code
    assert torch.equal(_logits(ours), _logits(model))
    classify = pipeline("text-classification", model=str(folder), trust_remote_code=True)
    assert classify("a tasty snack")[0]["label"] in {"LABEL_0", "LABEL_1", "LABEL_2"}


def test_saved_files_are_readable_by_other_users(pruned):
    _, folder = pruned
    for f in folder.iterdir():
        assert f.stat().st_mode & stat.S_IROTH, f


@pytest.mark.parametrize("embedding_bits", [8, 4])
def test_an_int8_folder_loads_bit_identical_with_its_code_and_is_never_loaded_with_random_weights(
        tmp_path, minilm_tokenizer, embedding_bits):
    """Dynamic int8 (pruned shapes too; the vocabulary embedding in 8-bit rows or int4 groups): refused by plain
    from_pretrained; with trust_remote_code the shipped code runs PyTorch's int8 kernels on the stored integers, the
    same logits as trainopt's model, bit for bit."""
    from transformers import AutoModelForSequenceClassification

    from trainopt.compress.quantize.int4 import Int4Embedding

    model = _bert(minilm_tokenizer)
    apply_plan(model, {"heads": [[0, 2, 3], [1]], "ffn": [list(range(0, 64, 2)), list(range(40))]})
    modules = dynamic.plan(model, stage_embeddings=True, skip=[], embedding_bits=embedding_bits,
                           embedding_group_size=16)
    dynamic.convert(model, modules)
    assert isinstance(model.bert.embeddings.word_embeddings, Int4Embedding) == (embedding_bits == 4)
    folder = save_model(model, minilm_tokenizer, tmp_path / "int8", {"task": "classification"})
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForSequenceClassification.from_pretrained(folder)
    plain = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    assert torch.equal(_logits(plain), _logits(model))
    ours, _, _ = load_saved(folder)
    assert torch.equal(_logits(ours), _logits(model))
    assert isinstance(ours.bert.embeddings.word_embeddings, Int4Embedding) == (embedding_bits == 4)


def test_an_int8_causal_lm_with_tied_embeddings_loads_with_its_code(tmp_path, minilm_tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    dynamic.convert(model, dynamic.plan(model, stage_embeddings=True, skip=[]))
    folder = save_model(model, minilm_tokenizer, tmp_path / "lm8", {"task": "causal_lm"})
    plain = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.inference_mode():
        assert torch.equal(plain(input_ids=IDS).logits, model(input_ids=IDS).logits)
        assert torch.equal(load_saved(folder)[0](input_ids=IDS).logits, model(input_ids=IDS).logits)


def test_a_torchao_folder_is_refused_both_ways(tmp_path, minilm_tokenizer):
    from transformers import AutoModelForSequenceClassification

    from trainopt.compress.quantize import weight_only

    model = _bert(minilm_tokenizer)
    weight_only.apply(model, "weight_only_int8", 32, True, [], torch.device("cpu"))
    folder = save_model(model, minilm_tokenizer, tmp_path / "ao", {"task": "classification"})
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForSequenceClassification.from_pretrained(folder)
    with pytest.raises(ValueError, match="trainopt predict"):
        AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)


def test_a_plain_model_stays_a_plain_folder(tmp_path, minilm_tokenizer):
    from transformers import AutoModelForSequenceClassification

    model = _bert(minilm_tokenizer)
    folder = save_model(model, minilm_tokenizer, tmp_path / "plain", {"task": "classification"})
    assert "auto_map" not in json.loads((folder / "config.json").read_text())
    assert not (folder / "trainopt_modeling.py").exists()
    plain = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert torch.equal(_logits(plain), _logits(model))
