"""Quantization: dynamic int8 conversion, QAT's fake quantization, the saved format and its reload."""

from __future__ import annotations

import json

import pytest
import torch

from trainopt.cli import main
from trainopt.compress.quantize.dynamic import FakeQuantLinear, convert, plan
from trainopt.artifacts import load_saved

from .conftest import classification_recipe


def test_fake_quant_matches_the_int8_kernel():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64) * 3
    with torch.no_grad():
        ref = lin(x)
        fq = FakeQuantLinear(lin)(x)
        q = convert(torch.nn.Sequential(lin), {"linear": ["0"], "embedding": []})(x)
    # QAT sees (almost) exactly what the converted kernel computes: far closer than the float output is
    assert (fq - q).abs().max() < 0.25 * (ref - q).abs().max()


def test_fake_quant_passes_gradients():
    lin = torch.nn.Linear(8, 4)
    FakeQuantLinear(lin)(torch.randn(3, 8)).sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_plan_skips_small_embeddings_and_named_modules(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    p = plan(model, True, ["classifier"])
    assert p["embedding"] == ["bert.embeddings.word_embeddings"]
    assert "classifier" not in p["linear"] and len(p["linear"]) == 2 * 6 + 1  # 6 per layer + pooler


@pytest.fixture(scope="module")
def quant_run(tmp_path_factory, tiny_bert_dir):
    from .conftest import make_reviews, write_jsonl

    d = tmp_path_factory.mktemp("qdata")
    write_jsonl(d / "train.jsonl", make_reviews(240, seed=1))
    write_jsonl(d / "test.jsonl", make_reviews(60, seed=2))
    raw = classification_recipe(tiny_bert_dir, d, epochs=2)
    raw["stages"] += [{"kind": "quantize", "name": "int8"},
                      {"kind": "quantize", "name": "int8-qat", "from_stage": "finetune",
                       "qat": {"max_steps": 6, "batch_size": 16, "optimizer": {"lr": 1e-4}, "checkpoint_every": 3}},
                      {"kind": "quantize", "name": "int8-e4", "from_stage": "finetune", "embedding_bits": 4,
                       "embedding_group_size": 16, "int4_qparams": "hqq"}]
    out = tmp_path_factory.mktemp("q") / "run"
    import trainopt

    report = trainopt.run(raw, out=out)
    return out, report


def test_quantize_stages_report_and_reload(quant_run):
    out, report = quant_run
    base, ptq, qat, _ = report["stages"]
    for st in (ptq, qat):
        assert st["effect"] in ("smaller", "accelerated")
        assert st["vs_baseline"]["size_ratio"] < 0.5  # the tiny model is mostly its (now 8-bit) embedding
        assert st["size"]["params"] == base["size"]["params"]
        assert st["quantization"]["method"] == "dynamic_int8" and st["speed"]["device"] == "cpu"
        assert st["vs_parent"]["stage"] == "finetune"
    assert ptq["quantization"]["qat"] is False and qat["quantization"]["qat"] is True
    assert qat["training"]["steps"] == 6 and "training" not in ptq

    # the saved form reloads into the same quantized model: same predictions, same accuracy
    model, tok, meta = load_saved(out / ptq["checkpoint"])
    assert meta["quantization"]["modules"]["embedding"] == ["bert.embeddings.word_embeddings"]
    from trainopt.compress.quantize.dynamic import is_quantized

    assert is_quantized(model)
    meta_file = json.loads((out / ptq["checkpoint"] / "trainopt.json").read_text())
    assert meta_file["quantization"]["method"] == "dynamic_int8"


def test_int4_embeddings_with_dynamic_int8_shrink_the_model_and_reload_exactly(quant_run):
    """`embedding_bits: 4` on dynamic int8: the vocabulary embedding in int4 groups, the Linears int8 as before — a
    smaller folder (the tiny model is mostly its embedding), predictions close to the 8-bit-row stage's, and the saved
    folder reloads into the same model."""
    from trainopt.compress.quantize.int4 import Int4Embedding

    out, report = quant_run
    base, ptq, _, e4 = report["stages"]
    assert e4["quantization"]["int4_embeddings"] == ["bert.embeddings.word_embeddings"]
    assert e4["quantization"]["embeddings"] == [] and e4["quantization"]["embedding_group_size"] == 16
    assert e4["quantization"]["int4_qparams"] == "hqq"
    assert "int4 in groups of 16" in e4["quantization"]["weights"]
    assert e4["size"]["disk_bytes"] < 0.75 * ptq["size"]["disk_bytes"]
    assert e4["size"]["params"] == base["size"]["params"]
    assert abs(e4["quality"]["accuracy"] - ptq["quality"]["accuracy"]) <= 0.1
    model, _, meta = load_saved(out / e4["checkpoint"])
    assert isinstance(model.bert.embeddings.word_embeddings, Int4Embedding)
    assert meta["quantization"]["modules"]["embedding4_group_size"] == 16
    ids = torch.tensor([[101, 2023, 2001, 2307, 102]])
    again, _, _ = load_saved(out / e4["checkpoint"])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)


def test_quantized_model_predicts_and_evaluates(quant_run, tmp_path, capsys):
    out, report = quant_run
    model_dir = out / report["stages"][1]["checkpoint"]
    assert main(["predict", str(model_dir), "--text", "great tasty coffee", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in ("great", "other")
    data_dir = report["recipe"]["data"]["source"]
    assert main(["eval", str(model_dir), "--out", str(tmp_path / "ev"), "--set", f"data.source={data_dir}",
                 "--set", "data.text_column=text", "--set", "data.label_column=label",
                 "--set", "measure.max_seconds=1", "--set", "run.progress=false"]) == 0
    ev = json.loads((tmp_path / "ev" / "report.json").read_text())["stages"][0]
    assert ev["quality"]["accuracy"] == report["stages"][1]["quality"]["accuracy"]


def test_quantize_command_and_unsupported_method(quant_run, tmp_path, capsys):
    out, report = quant_run
    model_dir = out / report["stages"][0]["checkpoint"]
    data_dir = report["recipe"]["data"]["source"]
    args = ["--set", f"data.source={data_dir}", "--set", "data.text_column=text", "--set", "data.label_column=label",
            "--set", "measure.max_seconds=1", "--set", "run.progress=false"]
    assert main(["quantize", str(model_dir), "--method", "weight_only_int4", "--out", str(tmp_path / "x"),
                 "--set", "stages.1.group_size=48", *args]) == 2
    assert "stages.1.group_size" in capsys.readouterr().err
    assert main(["quantize", str(model_dir), "--out", str(tmp_path / "q"), *args]) == 0
    rep = json.loads((tmp_path / "q" / "report.json").read_text())
    assert [s["name"] for s in rep["stages"]] == ["float", "dynamic-int8"]


def test_quantized_causal_lm_generates(tmp_path, tiny_gpt_dir, austen_text):
    import trainopt

    (tmp_path / "book.txt").write_text(austen_text)
    raw = {"name": "lmq", "task": "causal_lm", "model": {"path": str(tiny_gpt_dir)},
           "data": {"source": str(tmp_path / "book.txt"), "block_size": 32},
           "stages": [{"kind": "eval", "name": "float"}, {"kind": "quantize", "name": "int8"}],
           "run": {"progress": False}, "measure": {"batch_sizes": [1, 4], "max_seconds": 1, "generate_tokens": 8}}
    report = trainopt.run(raw, out=tmp_path / "run")
    fl, q = report["stages"]
    assert q["speed"]["generate_tokens_per_s_b1"] > 0 and q["speed"]["generate_new_tokens"] == 8
    assert "speedup_generate_b1" in q["vs_baseline"]
    assert q["quality"]["perplexity"] == pytest.approx(fl["quality"]["perplexity"], rel=0.1)
    model, tok, _ = load_saved(tmp_path / "run" / q["checkpoint"])
    ids = tok("It is a truth", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 4


def test_commands_infer_the_task_of_a_plain_hf_checkpoint(tmp_path, tiny_gpt_dir, austen_text):
    (tmp_path / "book.txt").write_text(austen_text)
    out = tmp_path / "ev"
    assert main(["eval", str(tiny_gpt_dir), "--out", str(out), "--set", f"data.source={tmp_path / 'book.txt'}",
                 "--set", "data.block_size=32", "--set", "measure.max_seconds=1", "--set", "measure.generate_tokens=4",
                 "--set", "run.progress=false"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["task"] == "causal_lm" and report["stages"][0]["quality"]["perplexity"] > 1


def test_smoothing_keeps_the_float_function_of_a_gqa_decoder():
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainopt.compress.quantize.dynamic import smooth

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # give some input channels outliers, as real LMs have
        model.model.layers[0].input_layernorm.weight[3] = 20.0
    ids = torch.randint(0, 64, (2, 16))
    before = model(input_ids=ids).logits
    assert smooth(model, [{"input_ids": ids}], alpha=0.8) == 14
    after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert model.model.layers[0].input_layernorm.weight[3] < 20.0  # the outlier moved into the weights


def test_smoothing_refuses_other_architectures(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    from trainopt.compress.quantize.dynamic import smooth
    from trainopt.errors import RecipeError

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    with pytest.raises(RecipeError, match="Llama-family"):
        smooth(model, [], 0.5)


def test_weight_only_int8_through_torchao_saves_and_reloads_exactly(tmp_path, tiny_bert_dir, reviews_dir):
    """torchao weight-only int8 (Linears per channel, the vocabulary embedding per row): the run reports it, the saved
    folder is smaller and reloads to the same logits, bit for bit, as a fresh quantization of the same weights."""
    pytest.importorskip("torchao")
    import trainopt
    from trainopt.compress.quantize import weight_only

    raw = classification_recipe(tiny_bert_dir, reviews_dir, max_steps=4, eval_every=None)
    raw["stages"].append({"kind": "quantize", "name": "wo8", "method": "weight_only_int8"})
    raw["run"]["device"] = "cpu"
    report = trainopt.run(raw, out=tmp_path / "run")
    fl, q = report["stages"]
    info = q["quantization"]
    assert info["format"] == "torchao" and info["embedding_modules"] == ["bert.embeddings.word_embeddings"]
    assert info["linear_modules"] == 2 * 6 + 2  # 6 per layer + pooler + classifier
    assert q["size"]["disk_bytes"] < 0.5 * fl["size"]["disk_bytes"] and q["effect"] in ("smaller", "accelerated")
    assert abs(q["quality"]["accuracy"] - fl["quality"]["accuracy"]) <= 0.05
    model, tok, meta = load_saved(tmp_path / "run" / q["checkpoint"])
    assert weight_only.is_quantized(model) and meta["quantization"]["method"] == "weight_only_int8"
    ids = tok(["great tasty coffee", "stale and bitter"], return_tensors="pt", padding=True)
    fresh, _, _ = load_saved(tmp_path / "run" / fl["checkpoint"])
    weight_only.apply(fresh, "weight_only_int8", 128, True, [], torch.device("cpu"))
    with torch.no_grad():
        assert torch.equal(fresh(**ids).logits, model(**ids).logits)  # the saved integers are the quantized ones


def test_weight_only_methods_refuse_dynamic_only_options():
    from trainopt.errors import RecipeError
    from trainopt.recipe import load_recipe

    with pytest.raises(RecipeError) as info:
        load_recipe({"model": {"path": "x"}, "data": {"source": "y"},
                     "stages": [{"kind": "quantize", "method": "weight_only_int8", "qat": {"max_steps": 2}}]})
    assert "stages.0" in info.value.key
    with pytest.raises(RecipeError) as info:
        load_recipe({"model": {"path": "x"}, "data": {"source": "y"},
                     "stages": [{"kind": "quantize", "method": "weight_only_int8", "int4_qparams": "hqq"}]})
    assert "stages.0" in info.value.key and "int4_qparams" in info.value.problem
    with pytest.raises(RecipeError) as info:
        load_recipe({"model": {"path": "x"}, "data": {"source": "y"},
                     "stages": [{"kind": "quantize", "method": "weight_only_int8", "embedding_bits": 4}]})
    assert "embedding_bits" in info.value.problem
    load_recipe({"model": {"path": "x"}, "data": {"source": "y"},  # dynamic int8 takes int4 embeddings (HQQ's too)
                 "stages": [{"kind": "quantize", "method": "dynamic_int8", "embedding_bits": 4,
                             "int4_qparams": "hqq"}]})
    with pytest.raises(RecipeError) as info:  # ... but has no int4 groups to solve without them
        load_recipe({"model": {"path": "x"}, "data": {"source": "y"},
                     "stages": [{"kind": "quantize", "method": "dynamic_int8", "int4_qparams": "hqq"}]})
    assert "int4_qparams" in info.value.problem


def test_int4_hqq_qparams_cut_the_rounding_error():
    """int4_qparams: hqq (torchao's HQQ solver) gives the same layer (same kernel, same bytes) with scales and zeros
    that reproduce the float layer more closely than min-max ones, at group 32 and 64 (seeded weights)."""
    pytest.importorskip("torchao")
    from trainopt.compress.quantize.weight_only import Int4Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(576, 192, bias=False).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(64, 576, dtype=torch.bfloat16)
    ref = lin(x).float()
    for group in (32, 64):
        err = {}
        for qp in ("minmax", "hqq"):
            layer = Int4Linear.from_linear(lin, group, qp)
            assert layer.state_dict()["qweight"].shape == (192, 288)
            err[qp] = float((layer(x).float() - ref).norm() / ref.norm())
        assert err["hqq"] < err["minmax"] < 0.1, (group, err)


def test_int4_linear_matches_its_integers_and_reloads_exactly():
    """Int4Linear: the kernel computes x·((q − 8)·scale + zero)ᵀ for torchao's tinygemm integers; its saved form (int4
    two per byte, plain order) reloads to the same integers and the same outputs; widths that need no padding pack."""
    pytest.importorskip("torchao")
    from torchao.quantization.quant_primitives import (
        MappingType,
        _choose_qparams_affine_tinygemm,
        _quantize_affine_tinygemm,
    )

    from trainopt.compress.quantize.weight_only import Int4Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 48).to(torch.bfloat16)  # 96 = 16·2: packs with inner_k_tiles 2, no padding
    layer = Int4Linear.from_linear(lin, 32)
    assert layer.inner_k_tiles == 2 and Int4Linear.tiles_for(576) == 4 and Int4Linear.tiles_for(1536) == 8
    scale, zero = _choose_qparams_affine_tinygemm(lin.weight.detach(), MappingType.ASYMMETRIC, (1, 32), torch.int32,
                                                  0, 15, 1e-6, torch.bfloat16, torch.bfloat16)
    q = _quantize_affine_tinygemm(lin.weight.detach(), (1, 32), scale, zero, torch.int32, 0, 15)
    assert torch.equal(layer.int_values().to(torch.int32), q)
    deq = ((q.float() - 8) * scale.float().repeat_interleave(32, 1) + zero.float().repeat_interleave(32, 1))
    assert (layer.dequantize().float() - deq).abs().max() <= 1e-2 * deq.abs().max()  # bf16 arithmetic
    x = torch.randn(5, 7, 96)
    y = layer(x)
    assert y.shape == (5, 7, 48) and y.dtype == x.dtype
    ref = x @ deq.t() + lin.bias.float()
    assert (y - ref).abs().max() < 0.02 * ref.abs().max()  # bf16 activations and accumulation
    assert (deq - lin.weight.float()).abs().max() <= scale.float().max() * 0.6  # the int4 grid (+ bf16 zeros)
    other = Int4Linear.from_linear(torch.nn.Linear(96, 48).to(torch.bfloat16), 32)
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other.int_values(), layer.int_values()) and torch.equal(other(x), y)
    assert layer.state_dict()["qweight"].shape == (48, 48) and layer.state_dict()["qweight"].dtype == torch.uint8


def _tiny_llama_int4_run(tmp_path, tiny_gpt_dir, austen_text, **quantize):
    """A tiny tied Llama (saved in tmp_path/llama) evaluated, then quantized by a weight_only_int4 stage on CPU."""
    pytest.importorskip("torchao")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import trainopt

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True)
    model_dir = tmp_path / "llama"
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_gpt_dir).save_pretrained(model_dir)
    (tmp_path / "book.txt").write_text(austen_text)
    raw = {"name": "lm4", "task": "causal_lm", "model": {"path": str(model_dir)},
           "data": {"source": str(tmp_path / "book.txt"), "block_size": 32},
           "stages": [{"kind": "eval", "name": "float"},
                      {"kind": "quantize", "name": "int4", "method": "weight_only_int4", "group_size": 32,
                       **quantize}],
           "run": {"progress": False, "device": "cpu"}, "measure": {"batch_sizes": [1], "max_seconds": 1}}
    return trainopt.run(raw, out=tmp_path / "run"), model_dir


@pytest.mark.parametrize("qparams", ["minmax", "hqq"])
def test_weight_only_int4_keeps_a_tied_head_on_the_int8_embedding_and_reloads(tmp_path, tiny_gpt_dir, austen_text,
                                                                              qparams):
    """weight_only_int4 on a Llama-family decoder (tied embeddings, CPU kernel): Linears → Int4Linear, the vocabulary
    embedding → int8 with the head still tied to it (one matrix), well over 2x fewer weight bytes than bf16, the saved
    folder reloads to the same logits, and perplexity stays close to the float model's."""
    from transformers import LlamaForCausalLM

    from trainopt.compress.quantize import weight_only
    from trainopt.compress.quantize.weight_only import Int4Linear

    report, model_dir = _tiny_llama_int4_run(tmp_path, tiny_gpt_dir, austen_text, int4_qparams=qparams)
    fl, q = report["stages"]
    info = q["quantization"]
    assert info["linear_modules"] == 2 * 7 and info["tied_head_shares_embedding"] and info["int4_qparams"] == qparams
    assert info["linear_modules_kept_float"] == 0
    assert q["size"]["params"] == fl["size"]["params"]  # int4 weights still count as parameters (tied: once)
    assert q["quality"]["perplexity"] == pytest.approx(fl["quality"]["perplexity"], rel=0.05)
    model, tok, _ = load_saved(tmp_path / "run" / q["checkpoint"])
    assert sum(isinstance(m, Int4Linear) for m in model.modules()) == 14
    assert model.lm_head.weight is model.model.embed_tokens.weight
    bf16 = LlamaForCausalLM.from_pretrained(model_dir).to(torch.bfloat16)
    assert weight_only.weight_bytes(bf16) / weight_only.weight_bytes(model) > 2.2  # int8 embedding: half the model
    fresh = LlamaForCausalLM.from_pretrained(model_dir)
    weight_only.apply(fresh, "weight_only_int4", 32, True, [], torch.device("cpu"), qparams)
    ids = tok("It is a truth universally acknowledged", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, model(input_ids=ids).logits)


def test_int4_linear_reports_missing_and_unexpected_keys():
    pytest.importorskip("torchao")
    from trainopt.compress.quantize.weight_only import Int4Linear

    layer = Int4Linear.from_linear(torch.nn.Linear(64, 32).to(torch.bfloat16), 32)
    result = layer.load_state_dict({"weight": torch.zeros(32, 64)}, strict=False)
    assert set(result.missing_keys) == {"qweight", "scale_and_zero", "bias"} and result.unexpected_keys == ["weight"]


def test_int4_leaves_linears_the_group_does_not_divide_in_bf16_and_counts_them():
    """A Linear whose input width the group size does not divide stays a bf16 nn.Linear, counted in
    `linear_modules_kept_float`; the others become Int4Linear and the model still runs."""
    pytest.importorskip("torchao")
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainopt.compress.quantize import weight_only
    from trainopt.compress.quantize.weight_only import Int4Linear

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    info = weight_only.apply(model, "weight_only_int4", 64, False, [], torch.device("cpu"))
    downs = [m for n, m in model.named_modules() if n.endswith("down_proj")]  # input width 96: 96 % 64 ≠ 0
    assert info["linear_modules_kept_float"] == 2 + 1  # the two down projections, and the LM head (300 outputs: the
    # kernel needs a multiple of 16)
    assert all(type(m) is torch.nn.Linear and m.weight.dtype == torch.bfloat16 for m in downs)
    assert sum(isinstance(m, Int4Linear) for m in model.modules()) == info["linear_modules"]
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_int4_embedding_and_its_tied_head_reload_and_shrink_the_model(tmp_path, tiny_gpt_dir, austen_text):
    """embedding_bits: 4 — the tied vocabulary embedding becomes Int4Embedding (nibbles + bf16 scales/zeros, groups of
    16 along the hidden axis), the head multiplies by its dequantized matrix (no second copy); lookups equal the
    dequantized rows; the folder reloads to the same logits; the model is smaller than with the int8 embedding and
    still generates."""
    from transformers import LlamaForCausalLM

    from trainopt.compress.quantize import weight_only
    from trainopt.compress.quantize.weight_only import Int4Embedding, Int4TiedHead

    report, model_dir = _tiny_llama_int4_run(tmp_path, tiny_gpt_dir, austen_text, embedding_bits=4,
                                             embedding_group_size=16, int4_qparams="hqq")
    fl, q = report["stages"]
    info = q["quantization"]
    assert info["embedding_bits"] == 4 and info["int4_embedding_modules"] == ["model.embed_tokens"]
    assert q["size"]["params"] == fl["size"]["params"]  # the int4 embedding counted once, the tied head not again
    assert q["quality"]["perplexity"] == pytest.approx(fl["quality"]["perplexity"], rel=0.05)
    model, tok, _ = load_saved(tmp_path / "run" / q["checkpoint"])
    emb, head = model.model.embed_tokens, model.lm_head
    assert isinstance(emb, Int4Embedding) and isinstance(head, Int4TiedHead) and head.embedding is emb
    assert emb.qweight.shape == (1024, 32) and emb.scale_and_zero.shape == (1024, 4, 2)
    ids = torch.tensor([[5, 17, 1023]])
    assert torch.equal(emb(ids)[0], emb.dequantize()[ids[0]])
    float_model = LlamaForCausalLM.from_pretrained(model_dir)
    err = (emb.dequantize().float() - float_model.model.embed_tokens.weight).abs()
    assert err.max() < float_model.model.embed_tokens.weight.abs().max() * 0.2  # an int4 grid of 16 values
    int8 = LlamaForCausalLM.from_pretrained(model_dir)
    weight_only.apply(int8, "weight_only_int4", 32, True, [], torch.device("cpu"))
    assert weight_only.weight_bytes(model) < 0.85 * weight_only.weight_bytes(int8)
    fresh = LlamaForCausalLM.from_pretrained(model_dir)
    weight_only.apply(fresh, "weight_only_int4", 32, True, [], torch.device("cpu"), "hqq", 4, 16)
    prompt = tok("It is a truth universally acknowledged", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=prompt).logits, model(input_ids=prompt).logits)
        out = model.generate(input_ids=prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == prompt.shape[1] + 4


def test_int4_embedding_falls_back_to_int8_when_the_group_does_not_divide_the_width():
    """embedding_bits: 4 with a group that does not divide the hidden width: that embedding stays int8 (torchao, per
    row) and the tied head keeps sharing its matrix; the info says which bits the embedding got."""
    pytest.importorskip("torchao")
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainopt.compress.quantize import weight_only
    from trainopt.compress.quantize.weight_only import Int4Embedding

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    info = weight_only.apply(model, "weight_only_int4", 32, True, [], torch.device("cpu"), "minmax", 4, 128)
    assert info["embedding_bits"] == 8 and info["int4_embedding_modules"] == []
    assert not any(isinstance(m, Int4Embedding) for m in model.modules())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
