"""`trainopt bench` / `trainopt env` and the acceleration switches (tiny model, CPU)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from trainopt.bench import bench
from trainopt.cli import main

from .conftest import classification_recipe


def test_bench_measures_each_technique_against_the_baseline(tmp_path, tiny_bert_dir, reviews_dir):
    r = classification_recipe(tiny_bert_dir, reviews_dir)
    result = bench(r, steps=6, warmup=2, only=["sdpa", "fused_adamw", "activation_checkpointing", "full"],
                   out=tmp_path / "b")
    rows = {x["variant"]: x for x in result["variants"]}
    assert list(rows) == ["baseline", "sdpa", "fused_adamw", "activation_checkpointing", "full"]
    assert rows["baseline"]["speedup"] == 1.0 and rows["baseline"]["loss_delta"] == 0.0
    for name, row in rows.items():
        assert row["tokens_per_s"] > 0 and row["loss_after"] > 0 and row["first_step_s"] > 0, name
    # Techniques that must not move the numerics: same weights, seed and batches -> (nearly) the same loss.
    assert abs(rows["sdpa"]["loss_delta"]) < 1e-3 and abs(rows["activation_checkpointing"]["loss_delta"]) < 1e-4
    assert abs(rows["fused_adamw"]["loss_delta"]) < 1e-3
    assert rows["full"]["settings"] == {"attention": "sdpa", "optimizer.fused": True}
    saved = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert [v["variant"] for v in saved["variants"]] == list(rows)
    assert "| baseline |" in (tmp_path / "b" / "bench.md").read_text()


def test_bench_of_a_causal_lm_has_the_fused_head_and_async_steps(tmp_path, tiny_gpt_dir, austen_text):
    book = tmp_path / "book.txt"
    book.write_text(austen_text)
    r = {"name": "lm", "task": "causal_lm", "model": {"path": str(tiny_gpt_dir), "dropout": 0.0},
         "data": {"source": str(book), "block_size": 32}, "stages": [{"kind": "train", "batch_size": 4}],
         "run": {"seed": 0, "progress": False}}
    result = bench(r, steps=6, warmup=2, only=["chunked_ce", "async_steps", "full"], out=tmp_path / "b")
    rows = {x["variant"]: x for x in result["variants"]}
    assert list(rows) == ["baseline", "chunked_ce", "async_steps", "full"]
    assert abs(rows["chunked_ce"]["loss_delta"]) < 1e-3  # the same loss without the logits tensor
    assert rows["full"]["settings"] == {"lm_loss": "chunked", "optimizer.fused": True, "recovery.enabled": False}
    with pytest.raises(Exception, match="liger_ce does not apply here"):
        bench(r, steps=6, warmup=2, only=["liger_ce"], out=tmp_path / "c")  # CUDA only


def test_compile_switch_trains_and_reports_first_step_time(tmp_path, tiny_bert_dir, reviews_dir):
    from torch._dynamo.utils import counters

    from trainopt.runner import run

    r = classification_recipe(tiny_bert_dir, reviews_dir, max_steps=4, eval_every=None, compile=True,
                              attention="sdpa", checkpoint_every=0)
    r["measure"]["latency"] = False
    r["data"]["bucket"] = False  # one padded shape: a single compile
    counters.clear()
    t = run(r, out=tmp_path / "c")["stages"][0]["training"]
    assert t["steps"] == 4 and t["first_step_s"] > 0
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really compiled the training forward


def test_activation_checkpointing_is_on_in_training_and_off_after(tmp_path, tiny_bert_dir, reviews_dir):
    from trainopt.data.prepare import load_texts, tokenize
    from trainopt.models import load_model, load_tokenizer
    from trainopt.recipe import load_recipe
    from trainopt.context import RunContext
    from trainopt.train.loop import train
    from trainopt.train.monitor import NullLog

    recipe = load_recipe(classification_recipe(tiny_bert_dir, reviews_dir, max_steps=3, eval_every=None,
                                               checkpoint_every=0, activation_checkpointing=True))
    tok = load_tokenizer(recipe)
    data = tokenize(load_texts(recipe), tok, recipe)
    model = load_model(recipe, tok, data.label_names)
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append(m.is_gradient_checkpointing))
    ctx = RunContext(recipe=recipe, run_dir=tmp_path, device=torch.device("cpu"), tokenizer=tok, data=data,
                     log=NullLog())
    assert train(model, data, recipe.stages[0], ctx, tmp_path / "s")["steps"] == 3
    assert seen and all(seen) and not model.is_gradient_checkpointing


def test_unknown_bench_technique_and_env(tmp_path, tiny_bert_dir, reviews_dir, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(classification_recipe(tiny_bert_dir, reviews_dir)))
    assert main(["bench", str(path), "--only", "warp_drive", "--out", str(tmp_path / "o")]) == 2
    assert "unknown technique warp_drive" in capsys.readouterr().err
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "torch " + torch.__version__ in out and "recommended: precision=" in out
    from trainopt.bench import env_report
    from trainopt.measure import cpu_int8_dot

    rec = env_report()["recommended"]
    if not torch.cuda.is_available():  # what int8 can buy follows the CPU's int8 dot-product instructions
        assert ("~2x" in rec["dynamic_int8"]) == bool(cpu_int8_dot())


@pytest.mark.parametrize("key, value", [("compile_mode", "turbo"), ("attention", "flash3")])
def test_bad_acceleration_keys(tiny_bert_dir, reviews_dir, key, value):
    from trainopt.errors import RecipeError
    from trainopt.recipe import load_recipe

    with pytest.raises(RecipeError) as e:
        load_recipe(classification_recipe(tiny_bert_dir, reviews_dir, **{key: value}))
    assert e.value.key == f"stages.0.{key}"


def test_a_variant_can_pad_every_batch_to_the_truncation_length(tmp_path, tiny_bert_dir, reviews_dir, monkeypatch):
    """The batching keys of a variant (CUDA graphs' one static shape) reach the collated batches, are recorded in its
    row, and are undone for the next variant: the shared tokenized splits go back to their own padding."""
    from trainopt import bench as bench_mod
    from trainopt.data.prepare import tokenize
    from trainopt.models import load_tokenizer
    from trainopt.runner import validate

    recipe, device, texts = validate(classification_recipe(tiny_bert_dir, reviews_dir))
    tokenizer = load_tokenizer(recipe, texts.train)
    data = tokenize(texts, tokenizer, recipe)
    widths = []
    collate = type(data.train).collate
    monkeypatch.setattr(type(data.train), "collate", lambda self, idx: widths.append(
        (b := collate(self, idx))["input_ids"].shape[1]) or b)
    before = (data.train.pad_multiple, data.train.max_width)
    row = bench_mod.run_variant(recipe, recipe.stages[0], data, tokenizer, device, "static",
                                {"data.bucket": False, "data.pad_to_multiple_of": "max_length"}, 3, 1, tmp_path / "v")
    assert row["tokens_per_s"] > 0 and row["pad_to_multiple_of"] == recipe.data.max_length and row["bucket"] is False
    assert widths and set(widths) == {recipe.data.max_length}
    assert (data.train.pad_multiple, data.train.max_width) == before
    assert "cuda_graphs" not in bench_mod.available(torch.device("cpu"))  # CUDA only
    assert "cuda_graphs" in bench_mod.available(torch.device("cuda"))


def test_the_full_stack_takes_one_attention_kernel():
    from trainopt import bench as bench_mod

    names = bench_mod.available(torch.device("cpu"), "causal_lm")
    assert "sdpa_causal" in names and "fa4" not in names  # FA4 needs a Hopper/Blackwell GPU
    assert bench_mod.full_stack(names)["attention"] == "sdpa_causal"
    assert bench_mod.full_stack(["sdpa", "sdpa_causal", "fa4", "compile"])["attention"] == "fa4"
    assert bench_mod.full_stack(["sdpa", "compile"])["attention"] == "sdpa"
    assert "sdpa_causal" not in bench_mod.available(torch.device("cpu"), "classification")


def test_inductor_options_of_a_variant_hold_during_its_training_only(tmp_path, tiny_bert_dir, reviews_dir,
                                                                      monkeypatch):
    """`inductor.<option>` keys of a bench variant patch torch._inductor.config while that variant trains (its
    compile sees them), are recorded in its row, and are undone afterwards; `log_every` sets the timing windows."""
    import torch._inductor.config as inductor_config

    from trainopt import bench as bench_mod
    from trainopt.data.prepare import tokenize
    from trainopt.models import load_tokenizer
    from trainopt.runner import validate
    from trainopt.train import loop

    recipe, device, texts = validate(classification_recipe(tiny_bert_dir, reviews_dir))
    tokenizer = load_tokenizer(recipe, texts.train)
    data = tokenize(texts, tokenizer, recipe)
    seen = []
    real = loop.train
    monkeypatch.setattr(loop, "train", lambda *a, **k: seen.append(
        (inductor_config.coordinate_descent_tuning, a[2].log_every)) or real(*a, **k))
    before = inductor_config.coordinate_descent_tuning
    row = bench_mod.run_variant(recipe, recipe.stages[0], data, tokenizer, device, "cdt",
                                {"inductor.coordinate_descent_tuning": not before}, 4, 1, tmp_path / "v", log_every=2)
    assert seen == [(not before, 2)]
    assert inductor_config.coordinate_descent_tuning == before
    assert row["settings"] == {"inductor.coordinate_descent_tuning": not before} and row["tokens_per_s"] > 0
