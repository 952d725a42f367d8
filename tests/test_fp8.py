"""fp8 training matmuls (train/fp8.py): the module swap round trip and a short training run (tiny models, CPU)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torchao")


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64,
                                      bos_token_id=0, eos_token_id=0)).eval()


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_enable_swaps_conv1d_projections_and_disable_restores_the_model_exactly(recipe):
    from torchao.float8.float8_linear import Float8Linear
    from transformers.pytorch_utils import Conv1D

    from trainopt.train import fp8

    m = _tiny_gpt2()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randint(0, 100, (2, 16))
    ref = m(x).logits
    info = fp8.enable(m, recipe)
    assert info == {"recipe": recipe, "fp8_linears": 8, "conv1d_swapped": 8}  # c_attn, c_proj, c_fc, c_proj × 2
    assert isinstance(m.transformer.h[0].mlp.c_fc, Float8Linear)
    assert type(m.lm_head) is torch.nn.Linear  # the output head stays in high precision
    out = m(x).logits
    assert 0 < ((out - ref).norm() / ref.norm()).item() < 0.05  # fp8 rounding: close, not equal
    out.sum().backward()
    assert m.transformer.h[0].mlp.c_fc.weight.grad is not None
    assert fp8.disable(m) == 8
    assert isinstance(m.transformer.h[1].attn.c_attn, Conv1D) and not hasattr(m, "_trainopt_fp8_conv1d")
    after = m.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(m(x).logits, ref)


def test_a_linear_encoder_keeps_its_classifier_and_odd_widths_in_high_precision():
    from torchao.float8.float8_linear import Float8Linear
    from transformers import BertConfig, BertForSequenceClassification

    from trainopt.train import fp8

    torch.manual_seed(0)
    m = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=40, num_labels=2))
    info = fp8.enable(m, "tensorwise")
    # q, k, v, attention output and the pooler are 32 × 32; the FFN (40 wide) and the classifier (2) stay
    assert info["fp8_linears"] == 5 and info["conv1d_swapped"] == 0
    assert not isinstance(m.classifier, Float8Linear) and not isinstance(m.bert.encoder.layer[0].intermediate.dense,
                                                                         Float8Linear)
    assert fp8.disable(m) == 5 and not any(isinstance(x, Float8Linear) for x in m.modules())


def test_training_with_fp8_follows_the_high_precision_loss_and_saves_the_plain_model(tmp_path, tiny_gpt_dir,
                                                                                    austen_text):
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    from trainopt.runner import run

    book = tmp_path / "book.txt"
    book.write_text(austen_text)

    def recipe(mode):
        return {"name": f"fp8-{mode}", "task": "causal_lm", "model": {"path": str(tiny_gpt_dir), "dropout": 0.0},
                "data": {"source": str(book), "block_size": 32, "max_train_examples": 64},
                "stages": [{"kind": "train", "name": "pretrain", "batch_size": 8, "max_steps": 8, "log_every": 1,
                            "checkpoint_every": 0, "optimizer": {"lr": 3e-3}, "fp8": mode}],
                "measure": {"latency": False}, "run": {"seed": 0, "progress": False}}

    losses, reports = {}, {}
    for mode in ("off", "tensorwise"):
        reports[mode] = run(recipe(mode), out=tmp_path / mode)
        rows = [json.loads(x) for x in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        losses[mode] = [r["loss"] for r in rows if r.get("stage") == "pretrain" and "loss" in r and "step" in r]
    assert len(losses["off"]) == len(losses["tensorwise"]) == 8
    assert losses["tensorwise"][-1] < losses["tensorwise"][0] - 0.3  # it trains
    for a, b in zip(losses["off"], losses["tensorwise"]):
        assert abs(a - b) / a < 0.03, (losses["off"], losses["tensorwise"])
    assert reports["tensorwise"]["stages"][0]["training"]["fp8"]["fp8_linears"] == 8
    assert reports["off"]["stages"][0]["training"]["fp8"] is None
    saved = next((tmp_path / "tensorwise").rglob("model.safetensors")).parent
    model = AutoModelForCausalLM.from_pretrained(saved)
    assert isinstance(model.transformer.h[0].attn.c_attn, Conv1D)


def test_fp8_where_it_cannot_run_is_a_recipe_error(tmp_path, tiny_bert_dir, reviews_dir, monkeypatch):
    from trainopt.errors import RecipeError
    from trainopt.runner import run
    from trainopt.train import fp8

    from .conftest import classification_recipe

    monkeypatch.setattr(fp8, "why_unsupported", lambda device: "fp8 matmuls need compute capability 8.9+")
    r = classification_recipe(tiny_bert_dir, reviews_dir, max_steps=2, fp8="tensorwise")
    r["measure"]["latency"] = False
    with pytest.raises(RecipeError, match="8.9"):
        run(r, out=tmp_path / "r")


def test_yaml_off_and_on_are_read_as_fp8_settings():
    """YAML turns `fp8: off` into false: the recipe reads it as `off` (and true as the tensorwise default)."""
    from trainopt.recipe import load_recipe

    assert load_recipe("gpt2-124m").stages[0].fp8 == "off"  # the built-in recipe writes `fp8: off`
    assert load_recipe("gpt2-124m", ["stages.pretrain.fp8=on"]).stages[0].fp8 == "tensorwise"
    assert load_recipe("gpt2-124m", ["stages.pretrain.fp8=rowwise"]).stages[0].fp8 == "rowwise"


def test_fp8_on_a_model_without_a_qualifying_linear_is_a_recipe_error_and_leaves_it_unchanged():
    from transformers import BertConfig, BertForSequenceClassification

    from trainopt.errors import RecipeError
    from trainopt.recipe import TrainStage
    from trainopt.train.setup import accelerate

    torch.manual_seed(0)  # every width 24 or 40: none is a multiple of 16
    m = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=24, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=40, num_labels=2))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(RecipeError, match="no Linear of this model qualifies"):
        accelerate(m, TrainStage(kind="train", name="ft", fp8="tensorwise"))
    from torchao.float8.float8_linear import Float8Linear

    assert not any(isinstance(x, Float8Linear) for x in m.modules()) and not hasattr(m, "_trainopt_fp8_conv1d")
    after = m.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_fp8_runs_under_bf16_autocast_where_torchaos_module_alone_fails(recipe):
    """precision: bf16 is autocast over fp32 weights; torchao's Float8Linear alone fails there in evaluation
    (inference mode: aten.to.dtype on its fp8 tensor, pytorch/ao#568) — the swapped-in module casts the input
    itself and runs with autocast off, in training and in evaluation."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    from trainopt.train import fp8

    x = torch.randint(0, 100, (2, 16))
    plain = _tiny_gpt2()
    plain.transformer.h[0].mlp.c_fc = torch.nn.Linear(32, 128)  # a Linear torchao converts
    convert_to_float8_training(plain, module_filter_fn=lambda m, fqn: fqn.endswith("mlp.c_fc"),
                               config=Float8LinearConfig.from_recipe_name(recipe))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode(), \
            pytest.raises((NotImplementedError, AssertionError), match="to.dtype|axiswise"):
        plain(x)

    m = _tiny_gpt2()
    with torch.no_grad():
        ref = m(x).logits
    fp8.enable(m, recipe)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x).logits
        assert m.transformer.h[0].mlp.c_fc(torch.randn(3, 32)).dtype == torch.bfloat16  # autocast's dtype out
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        evaluated = m(x).logits
    for o in (out, evaluated):
        assert ((o.float() - ref).norm() / ref.norm()).item() < 0.05
    out.float().sum().backward()
    assert m.transformer.h[0].attn.c_attn.weight.grad.dtype == torch.float32  # master weights stay fp32


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_fp8_adds_no_graph_break_under_compile_and_autocast(recipe):
    """A graph break in the fp8 module makes dynamo compile every Linear on its own (GPT-2 rowwise hit the recompile
    limit and fell back to eager on a GPU, 0.43x): the fp8 model breaks exactly where the plain one does."""
    from trainopt.train import fp8

    x = torch.randint(0, 100, (2, 16))

    def breaks(m):
        def f(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(x, labels=x).loss
        torch._dynamo.reset()
        return torch._dynamo.explain(f)(x).graph_break_count

    plain = _tiny_gpt2().train()
    m = _tiny_gpt2().train()
    fp8.enable(m, recipe)
    assert breaks(m) == breaks(plain)


def test_fp8_and_fused_head_checks_run_on_the_meta_model_before_work():
    """validate.check_model builds the model class from its config on the meta device: fp8 with no Linear of a
    multiple-of-16 width is refused with the stage's key, as the loop would once the model is loaded."""
    import torch

    from trainopt.errors import RecipeError
    from trainopt.models import model_config
    from trainopt.recipe import load_recipe
    from trainopt.train import fp8
    from trainopt.validate import _meta_model, check_model

    def recipe(width, **stage):
        return load_recipe({"task": "causal_lm", "model": {"config": {"model_type": "gpt2", "n_embd": width,
                                                                      "n_head": 2, "n_layer": 1, "vocab_size": 64},
                                                      "train_tokenizer": {"vocab_size": 300}},
                            "stages": [{"kind": "train", "name": "pre", **stage}]})

    def eligible(width):
        r = recipe(width)
        return fp8.eligible(_meta_model(r, model_config(r.model)))

    assert len(eligible(32)) == 4 and eligible(24) == []  # qkv, proj, fc, fc-proj; 24 is no multiple of 16
    with pytest.raises(RecipeError) as e:
        check_model(recipe(24, fp8="tensorwise"), torch.device("cpu"))
    assert e.value.key == "stages.0.fp8"
    check_model(recipe(32, fp8="tensorwise", activation_checkpointing=True, lm_loss="chunked"), torch.device("cpu"))
