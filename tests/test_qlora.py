"""QLoRA (lora stage, quantize_base: nf4 / fp4): the base's Linear layers are bitsandbytes 4-bit while the adapters
train, the 4-bit weights are a quarter of the fp16 bytes, the merged folder is the model that trained (dequantised
base + adapter, a plain HF folder), the unmerged adapter reloads onto a base quantised the same way, and recipes
that cannot work are refused before the run."""

from __future__ import annotations

import pytest
import torch

from trainopt.artifacts import load_saved
from trainopt.errors import RecipeError
from trainopt.runner import run

from .conftest import lora_runs, sft_recipe, write_definitions

bnb = pytest.importorskip("bitsandbytes")


def _logits(model, ids):
    with torch.inference_mode():
        return model.eval()(input_ids=ids).logits


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_base_in_4bit_trains_adapters_and_dequantises_exactly(tiny_chat_llama_dir, quant_type):
    from transformers import AutoModelForCausalLM

    from trainopt.lora.quantize import dequantized, quantize_base
    from trainopt.lora.spec import LoraStage
    from trainopt.lora.stage import wrap

    full = AutoModelForCausalLM.from_pretrained(str(tiny_chat_llama_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_chat_llama_dir))
    info = quantize_base(model, quant_type, True, torch.float32, torch.device("cpu"))
    linears = [m for m in full.modules() if type(m) is torch.nn.Linear and m is not full.lm_head]
    assert info["layers"] == len(linears) and info["params"] == sum(m.weight.numel() for m in linears)
    assert info["weight_bytes"] > info["params"] // 2  # 4 bits a weight, plus the block scales
    # at a real layer's size the scales are small: a 1024 x 1024 projection in under 0.3x its fp16 bytes
    big = quantize_base(torch.nn.Sequential(torch.nn.Linear(1024, 1024)), quant_type, True, torch.float32,
                        torch.device("cpu"))
    assert big["params"] == 1024 * 1024 and big["weight_bytes"] < 0.3 * 2 * big["params"]
    assert type(model.lm_head) is torch.nn.Linear  # the head stays in full precision
    stage = LoraStage(kind="lora", rank=4, quantize_base=quant_type)
    adapted = wrap(model, stage, "causal_lm", seed=0)
    q_proj = adapted.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__module__ == "peft.tuners.lora.bnb" and isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    ids = torch.randint(0, 300, (2, 11))
    adapted.train()
    adapted(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in adapted.parameters() if p.requires_grad)
    assert not any(p.requires_grad for n, p in adapted.named_parameters() if "lora_" not in n)
    for n, p in adapted.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    # quantisation error is real (the 4-bit model is not the fp32 one) ...
    assert not torch.allclose(_logits(adapted, ids), _logits(wrap(full, stage, "causal_lm", seed=0), ids), atol=1e-3)
    # ... and the dequantised base with the same adapter is the same model, before and after merging
    before = _logits(adapted, ids)
    plain = dequantized(adapted)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in plain.modules())
    torch.testing.assert_close(_logits(plain, ids), before, atol=1e-5, rtol=1e-5)
    merged = plain.merge_and_unload()
    torch.testing.assert_close(_logits(merged, ids), before, atol=1e-4, rtol=1e-4)
    assert all(v.dtype == torch.float32 for v in merged.state_dict().values())


@pytest.fixture(scope="module")
def qlora_runs(tmp_path_factory, tiny_chat_llama_dir):
    return lora_runs(tmp_path_factory.mktemp("qlora"), tiny_chat_llama_dir, quantize_base="nf4")


def test_qlora_stage_reports_the_4bit_base_and_improves(qlora_runs):
    for merge in (True, False):
        _, report = qlora_runs[merge]
        base, lora = report["stages"]
        info = lora["lora"]
        assert info["quantize_base"] == "nf4" and info["double_quant"] is True and info["quantized_layers"] > 0
        assert info["quantized_weight_bytes"] > info["quantized_params"] // 2  # 4 bits a weight + scales
        assert lora["quality"]["loss"] < base["quality"]["loss"]
        run_dir = qlora_runs[merge][0]
        assert f"QLoRA: the base's {info['quantized_layers']} Linear layers" in (run_dir / "report.md").read_text()


def test_merged_qlora_folder_is_the_trained_model_in_plain_transformers(qlora_runs):
    from transformers import AutoModelForCausalLM

    run_dir, report = qlora_runs[True]
    lora = report["stages"][1]
    merged = AutoModelForCausalLM.from_pretrained(str(run_dir / lora["checkpoint"]))
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    # the unmerged adapter on a base quantised the same way (what trainopt loads for merge: false) gives the same
    # logits as the merged folder: merging happened on the dequantised base the adapters were trained against
    unmerged_dir, unmerged_report = qlora_runs[False]
    adapter, _, meta = load_saved(unmerged_dir / unmerged_report["stages"][1]["checkpoint"], "causal_lm")
    assert meta["lora"]["quantize_base"] == {"quant_type": "nf4", "double_quant": True}
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in adapter.modules())
    ids = torch.randint(0, 300, (2, 13))
    torch.testing.assert_close(_logits(merged, ids), _logits(adapter, ids), atol=1e-4, rtol=1e-4)
    assert lora["quality"]["loss"] == pytest.approx(unmerged_report["stages"][1]["quality"]["loss"], abs=1e-4)


def test_bad_qlora_recipes_are_refused_before_work(tiny_chat_llama_dir, tmp_path, monkeypatch):
    data = write_definitions(tmp_path)
    raw = sft_recipe(tiny_chat_llama_dir, data, quantize_base="nf4", fp8="tensorwise")
    with pytest.raises(RecipeError, match="stages.0.fp8"):
        run(raw, out=tmp_path / "fp8", show_summary=False)
    assert not (tmp_path / "fp8").exists()
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(RecipeError, match="stages.0.quantize_base"):
        run(sft_recipe(tiny_chat_llama_dir, data, quantize_base="nf4"), out=tmp_path / "nobnb", show_summary=False)
    assert not (tmp_path / "nobnb").exists()
