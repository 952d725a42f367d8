"""Exports run outside trainopt: an ONNX graph in onnxruntime (float and int8) and a plain transformers folder each
compute what trainopt's model computes; a pruned or int8 model exported as hf loads with plain from_pretrained (no
remote code); the export stage's report row is measured in its runtime; bad exports are refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from trainopt.artifacts import load_saved, save_model
from trainopt.cli import main
from trainopt.compress.prune.structured import apply_plan
from trainopt.compress.quantize import dynamic

from .conftest import classification_recipe

TEXTS = ["a great product, fresh and tasty", "arrived broken and stale", "ok"]


def _cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def _logits(model, tokenizer, texts=TEXTS):
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


@pytest.fixture
def pruned_dir(tmp_path, tiny_bert_dir):
    model, tok, _ = load_saved(tiny_bert_dir, "classification")
    apply_plan(model, {"heads": [[1], [0, 1]], "ffn": [list(range(0, 64, 2)), list(range(40))]})
    return save_model(model, tok, tmp_path / "pruned", {"task": "classification", "labels": ["neg", "pos"]})


def test_onnx_export_matches_the_model_and_predicts_alike(tmp_path, pruned_dir, capsys):
    out = tmp_path / "onnx"
    code, stdout, err = _cli(["export", pruned_dir, "--format", "onnx", "--out", out], capsys)
    assert code == 0, err
    assert "max |logit difference|" in stdout and (out / "model.onnx").is_file()
    source, tok, _ = load_saved(pruned_dir)
    onnx_model, _, meta = load_saved(out)
    assert type(onnx_model).__name__ == "OrtModel" and meta["export"]["format"] == "onnx"
    assert torch.allclose(_logits(onnx_model, tok), _logits(source, tok), atol=1e-4)
    for folder in (pruned_dir, out):  # trainopt predict runs the export through onnxruntime
        assert main(["predict", str(folder), "--json"] + [a for t in TEXTS for a in ("--text", t)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    ours, theirs = [json.loads(x) for x in lines[:3]], [json.loads(x) for x in lines[3:]]
    assert [r["label"] for r in ours] == [r["label"] for r in theirs]
    for a, b in zip(ours, theirs):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)


def test_onnx_int8_export_is_smaller_and_agrees(tmp_path, tiny_bert_dir, capsys):
    out = tmp_path / "int8"
    code, stdout, err = _cli(["export", tiny_bert_dir, "--quantize", "int8", "--out", out], capsys)
    assert code == 0, err
    float_out = tmp_path / "float"
    assert _cli(["export", tiny_bert_dir, "--out", float_out, "--no-optimize"], capsys)[0] == 0
    assert (out / "model.onnx").stat().st_size < 0.6 * (float_out / "model.onnx").stat().st_size
    source, tok, _ = load_saved(tiny_bert_dir, "classification")
    int8, _, _ = load_saved(out)
    assert torch.allclose(_logits(int8, tok), _logits(source, tok), atol=0.05)


def test_hf_export_of_pruned_and_int8_models_loads_in_plain_transformers(tmp_path, pruned_dir, capsys):
    """Pruned shapes come back zero-padded (the same logits, no remote code); int8 weights come back as floats."""
    from transformers import AutoModelForSequenceClassification

    source, tok, _ = load_saved(pruned_dir)
    out = tmp_path / "hf"
    assert _cli(["export", pruned_dir, "--format", "hf", "--out", out], capsys)[0] == 0
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()  # no trust_remote_code
    assert torch.allclose(_logits(plain, tok), _logits(source, tok), atol=1e-5)
    int8 = load_saved(pruned_dir)[0]
    dynamic.convert(int8, dynamic.plan(int8, stage_embeddings=True, skip=[]))
    int8_dir = save_model(int8, tok, tmp_path / "int8", {"task": "classification", "labels": ["neg", "pos"]})
    code, stdout, err = _cli(["export", int8_dir, "--format", "hf", "--out", tmp_path / "hf8"], capsys)
    assert code == 0, err
    dequantized = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf8").eval()
    assert torch.allclose(_logits(dequantized, tok), _logits(int8, tok), atol=0.05)
    code, _, err = _cli(["export", int8_dir, "--format", "onnx", "--out", tmp_path / "no"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "quantized" in err, err


def test_a_causal_lm_exports_to_onnx_for_scoring(tmp_path, tiny_chat_llama_dir, capsys):
    from trainopt.export.command import _sample

    folder = save_model(load_saved(tiny_chat_llama_dir, "causal_lm")[0], load_saved(tiny_chat_llama_dir,
                        "causal_lm")[1], tmp_path / "lm", {"task": "causal_lm"})
    out = tmp_path / "lm-onnx"
    code, _, err = _cli(["export", folder, "--out", out], capsys)
    assert code == 0, err
    sample = _sample(folder)
    source = load_saved(folder)[0]
    onnx_model = load_saved(out)[0]
    with torch.inference_mode():
        assert torch.allclose(onnx_model(**sample).logits, source(**sample).logits, atol=1e-4)
    code, _, err = _cli(["predict", out, "--text", "hello"], capsys)
    assert code == 2 and "does not generate" in err and len(err.splitlines()) == 1


def test_export_refuses_to_write_into_the_model_or_over_user_files(tmp_path, tiny_bert_dir, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    for out, flag in ((tiny_bert_dir / "onnx", []), (user, []), (user, ["--overwrite"])):
        code, _, err = _cli(["export", tiny_bert_dir, "--out", out, *flag], capsys)
        assert code == 2 and len(err.splitlines()) == 1, err
    assert (user / "notes.txt").read_text() == "keep" and not (tiny_bert_dir / "onnx").exists()
    out = tmp_path / "exp"
    assert _cli(["export", tiny_bert_dir, "--out", out], capsys)[0] == 0
    assert _cli(["export", tiny_bert_dir, "--out", out], capsys)[0] == 2  # exists: --overwrite replaces an export
    assert _cli(["export", tiny_bert_dir, "--out", out, "--overwrite"], capsys)[0] == 0


def test_an_export_stage_is_a_measured_row_and_the_chain_goes_on_from_its_parent(tmp_path, tiny_bert_dir,
                                                                                 reviews_dir, capsys):
    raw = classification_recipe(tiny_bert_dir, reviews_dir, max_steps=4)
    raw["stages"] += [{"kind": "export", "name": "onnx"}, {"kind": "export", "name": "hf", "format": "hf"},
                      {"kind": "quantize", "name": "int8"}]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    stages = {s["name"]: s for s in json.loads((out / "report.json").read_text())["stages"]}
    train = raw["stages"][0]["name"]
    for name in ("onnx", "hf"):
        row = stages[name]
        assert row["kind"] == "export" and row["vs_parent"]["stage"] == train
        assert row["quality"]["accuracy"] == stages[train]["quality"]["accuracy"]  # float exports: the same model
        assert row["export"]["max_abs_logit_diff"] < 1e-3 and row["speed"]["latency_ms_b1_p50"] > 0
    assert stages["onnx"]["export"]["runtime"].startswith("onnxruntime")
    assert "Export: onnx, files" in (out / "report.md").read_text()  # the runtime and the agreement, in words
    assert stages["int8"]["vs_parent"]["stage"] == train  # the quantize stage starts from the trained model
    recipe.write_text(yaml.safe_dump(dict(raw, stages=raw["stages"] + [{"kind": "export", "name": "late"}])))
    code, _, err = _cli(["check", recipe], capsys)  # an ONNX export of the int8 stage
    assert code == 2 and "stages.4.format" in err and "onnx cannot hold" in err, err
    recipe.write_text(yaml.safe_dump(raw))
    code, _, err = _cli(["check", recipe, "--set", "stages.3.from_stage=onnx"], capsys)
    assert code == 2 and "stages.3.from_stage" in err and "is an export" in err, err


def test_gguf_export_reads_back_with_the_same_weights_and_tokens(tmp_path, tiny_chat_llama_dir, capsys):
    """transformers' own GGUF loader (the check that runs without llama.cpp) reads the file back: float32 gives the
    model's logits, q8_0 and q4_0 close ones, and the GGUF tokenizer tokenizes as the model's does."""
    from transformers import AutoTokenizer

    from trainopt.export.command import _sample

    model, tok, _ = load_saved(tiny_chat_llama_dir, "causal_lm")
    folder = save_model(model, tok, tmp_path / "lm", {"task": "causal_lm"})
    sample = _sample(folder)
    with torch.inference_mode():
        ref = model(**sample).logits
    for quant, atol in (("none", 1e-5), ("q8_0", 0.05), ("q4_0", 0.5)):
        out = tmp_path / f"gguf-{quant}"
        code, stdout, err = _cli(["export", folder, "--format", "gguf", "--quantize", quant, "--out", out], capsys)
        assert code == 0, err
        back, _, meta = load_saved(out)
        assert meta["export"] == {"format": "gguf", "quantize": quant}
        with torch.inference_mode():
            assert torch.allclose(back(**sample).logits, ref, atol=atol), quant
    sizes = {q: (tmp_path / f"gguf-{q}" / "model.gguf").stat().st_size for q in ("none", "q8_0", "q4_0")}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["none"]
    text = "What does <|im_start|> the word 'harbour' mean? 42"
    assert AutoTokenizer.from_pretrained(tmp_path / "gguf-none", gguf_file="model.gguf")(text)["input_ids"] == \
        tok(text)["input_ids"]
    code, _, err = _cli(["export", folder, "--format", "gguf", "--quantize", "int8", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "does not apply to format: gguf" in err, err


def test_gguf_is_refused_for_a_classifier_before_work(tmp_path, tiny_bert_dir, reviews_dir, capsys):
    raw = classification_recipe(tiny_bert_dir, reviews_dir, max_steps=1)
    raw["stages"].append({"kind": "export", "name": "gguf", "format": "gguf", "quantize": "q4_0"})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    code, _, err = _cli(["check", recipe], capsys)
    assert code == 2 and "stages.1.format" in err and "causal language models" in err, err
    code, _, err = _cli(["export", tiny_bert_dir, "--format", "gguf", "--out", tmp_path / "g"], capsys)
    assert code == 2 and "causal language models" in err and len(err.splitlines()) == 1, err


def test_trainopt_eval_scores_an_onnx_export_and_training_it_is_refused(tmp_path, tiny_bert_dir, reviews_dir, capsys):
    out = tmp_path / "onnx"
    assert _cli(["export", tiny_bert_dir, "--out", out], capsys)[0] == 0
    raw = classification_recipe(tiny_bert_dir, reviews_dir, max_steps=1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    runs = {}
    for name, folder in (("source", tiny_bert_dir), ("export", out)):
        code, _, err = _cli(["eval", folder, "--recipe", recipe, "--out", tmp_path / f"eval-{name}"], capsys)
        assert code == 0, err
        runs[name] = json.loads((tmp_path / f"eval-{name}" / "report.json").read_text())["stages"][0]
    assert runs["export"]["quality"]["accuracy"] == runs["source"]["quality"]["accuracy"]
    assert runs["export"]["quality"]["loss"] == pytest.approx(runs["source"]["quality"]["loss"], abs=1e-4)
    assert runs["export"]["size"]["params"] > 0
    code, _, err = _cli(["check", recipe, "--set", f"model.path={out}"], capsys)
    assert code == 2 and "model.path" in err and "ONNX export" in err, err


def test_a_resolved_recipe_with_exports_parses_again():
    """recipe.yaml holds every key of every stage, defaults included: it must parse back to the same recipe."""
    from trainopt.recipe import dump_recipe, load_recipe, parse_recipe

    raw = {"model": {"path": "builtin:minilm-l6"}, "stages": [
        {"kind": "train", "name": "ft"}, {"kind": "export", "name": "o", "quantize": "int8"},
        {"kind": "export", "name": "h", "format": "hf", "dtype": "bfloat16"}]}
    recipe = parse_recipe(raw)
    assert parse_recipe(yaml.safe_load(dump_recipe(recipe))) == recipe
    with pytest.raises(Exception, match="opset"):
        load_recipe(raw, ["stages.2.opset=19"])


def test_a_lora_adapter_folder_exports_merged(tmp_path, tiny_chat_llama_dir, capsys):
    """An adapter-only folder (lora, merge: false) exported as hf: the adapters merged into a plain folder that
    AutoModelForCausalLM loads with the adapter model's logits; to ONNX and GGUF likewise."""
    from transformers import AutoModelForCausalLM

    from trainopt.export.command import _sample

    from .conftest import lora_runs

    run_dir, report = lora_runs(tmp_path, tiny_chat_llama_dir)[False]
    adapter = run_dir / next(s for s in report["stages"] if s["kind"] == "lora")["checkpoint"]
    assert (adapter / "adapter_config.json").is_file()
    source = load_saved(adapter, "causal_lm")[0]
    sample = _sample(adapter)
    with torch.inference_mode():
        ref = source(**sample).logits
    for fmt in ("hf", "onnx", "gguf"):
        out = tmp_path / f"merged-{fmt}"
        code, _, err = _cli(["export", adapter, "--format", fmt, "--out", out], capsys)
        assert code == 0, err
        if fmt == "hf":
            model = AutoModelForCausalLM.from_pretrained(out).eval()
        else:
            model = load_saved(out)[0]
        with torch.inference_mode():
            assert torch.allclose(model(**sample).logits, ref, atol=1e-4), fmt


def test_export_stages_of_a_causal_lm_are_scored_and_timed_in_their_runtimes(tmp_path, tiny_chat_llama_dir,
                                                                              definitions_dir):
    """GGUF (llama.cpp, or transformers' GGUF loader where llama-cpp-python is absent) and ONNX rows of a causal LM:
    perplexity on the same test blocks as the float model; generation timed where the runtime generates."""
    from trainopt.runner import run

    from .conftest import sft_recipe

    raw = sft_recipe(tiny_chat_llama_dir, definitions_dir)
    raw["stages"] = [{"kind": "eval", "name": "base"},
                     {"kind": "export", "name": "gguf", "format": "gguf", "quantize": "q8_0"},
                     {"kind": "export", "name": "onnx", "format": "onnx"}]
    raw["measure"]["samples"] = 0
    report = run(raw, out=tmp_path / "run", show_summary=False)
    base, gguf_row, onnx_row = report["stages"]
    assert onnx_row["quality"]["perplexity"] == pytest.approx(base["quality"]["perplexity"], rel=1e-4)
    assert gguf_row["quality"]["perplexity"] == pytest.approx(base["quality"]["perplexity"], rel=0.05)
    assert gguf_row["speed"]["generate_tokens_per_s_b1"] > 0
    assert onnx_row["speed"].get("generate_tokens_per_s_b1") is None  # no KV cache in the graph: it scores only
    assert gguf_row["vs_parent"]["stage"] == "base"
    assert gguf_row["size"]["disk_bytes"] < 0.5 * base["size"]["disk_bytes"]


def test_hf_export_writes_the_chosen_dtype(tmp_path, tiny_bert_dir, capsys):
    from safetensors import safe_open

    out = tmp_path / "bf16"
    code, _, err = _cli(["export", tiny_bert_dir, "--format", "hf", "--dtype", "bfloat16", "--out", out], capsys)
    assert code == 0, err
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    code, _, err = _cli(["export", tiny_bert_dir, "--format", "onnx", "--dtype", "bfloat16", "--out", tmp_path / "x"],
                        capsys)
    assert code == 2 and "dtype applies to format: hf" in err, err
    code, _, err = _cli(["export", tiny_bert_dir, "--format", "hf", "--no-optimize", "--out", tmp_path / "y"], capsys)
    assert code == 2 and "optimize apply to format: onnx" in err, err
