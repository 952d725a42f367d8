"""LoRA through PEFT (trainopt/lora/): only the adapters train, the adapter folder loads in plain peft with the same
logits, merged equals unmerged, a killed LoRA run resumes bit for bit, and `trainopt predict` reads both folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainopt.artifacts import load_saved
from trainopt.runner import run

from .conftest import lora_runs, sft_recipe


def _logits(model, ids):
    with torch.inference_mode():
        return model.eval()(input_ids=ids).logits


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_chat_llama_dir):
    return lora_runs(tmp_path_factory.mktemp("lora"), tiny_chat_llama_dir)


def test_only_adapters_train_and_quality_improves(runs, tiny_chat_llama_dir):
    run_dir, report = runs[False]
    base, lora = report["stages"]
    info = lora["lora"]
    assert 0 < info["trainable_fraction"] <= 0.10 and info["trainable_params"] < info["total_params"]
    assert set(info["target_modules"]) >= {"q_proj", "v_proj", "down_proj"} and "lm_head" not in info["target_modules"]
    assert lora["quality"]["loss"] < base["quality"]["loss"]
    assert lora["training"]["tokens_seen"] > 0 and lora["cost"]["tokens_per_s"] > 0
    # the unmerged stage's folder is the adapter alone: megabytes of adapter, not the model
    folder = run_dir / lora["checkpoint"]
    assert (folder / "adapter_config.json").is_file() and not (folder / "config.json").exists()
    assert lora["size"]["disk_bytes"] == (folder / "adapter_model.safetensors").stat().st_size
    # the base weights did not move
    model, _, _ = load_saved(folder, "causal_lm")
    start = load_file(str(tiny_chat_llama_dir / "model.safetensors"))
    base_state = model.get_base_model().state_dict()
    for k, v in start.items():
        key = k.replace("q_proj.weight", "q_proj.base_layer.weight").replace("v_proj.weight", "v_proj.base_layer.weight")
        if key in base_state:
            assert torch.equal(base_state[key], v), k


def test_adapter_loads_in_plain_peft_with_the_same_logits(runs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir, report = runs[False]
    folder = run_dir / report["stages"][1]["checkpoint"]
    cfg = json.loads((folder / "adapter_config.json").read_text())
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"]), str(folder))
    ours, _, _ = load_saved(folder, "causal_lm")
    ids = torch.randint(0, 300, (2, 17))
    torch.testing.assert_close(_logits(plain, ids), _logits(ours, ids))
    # and it is not the base model: the adapters changed something
    base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"])
    assert not torch.allclose(_logits(base, ids), _logits(ours, ids))


def test_merged_equals_unmerged(runs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir, report = runs[True]
    lora = report["stages"][1]
    merged_dir = run_dir / lora["checkpoint"]
    assert (merged_dir / "config.json").is_file()  # a plain HF folder
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    adapter = run_dir / lora["lora"]["adapter"]
    base = AutoModelForCausalLM.from_pretrained(json.loads((adapter / "adapter_config.json").read_text())
                                                ["base_model_name_or_path"])
    unmerged = PeftModel.from_pretrained(base, str(adapter))
    ids = torch.randint(0, 300, (2, 17))
    torch.testing.assert_close(_logits(merged, ids), _logits(unmerged, ids), atol=1e-5, rtol=1e-5)
    assert lora["quality"]["loss"] == pytest.approx(runs[False][1]["stages"][1]["quality"]["loss"], abs=1e-4)


def test_predict_reads_both_folders(runs):
    from trainopt.predict import predict

    for merge in (True, False):
        run_dir, report = runs[merge]
        out = predict(run_dir / report["stages"][1]["checkpoint"], ["What is tea 1?"], max_new_tokens=4)
        assert len(out) == 1 and isinstance(out[0]["generated"], str)


@pytest.mark.parametrize("quantize_base", ["none", "nf4"])  # nf4: QLoRA, the 4-bit base rebuilt on resume
def test_killed_lora_run_resumes_bit_for_bit(tmp_path, tiny_chat_llama_dir, definitions_dir, quantize_base):
    import os
    import subprocess
    import sys

    import yaml

    raw = sft_recipe(tiny_chat_llama_dir, definitions_dir, merge=False, keep_best=False, max_steps=6,
                     checkpoint_every=2, dropout=0.1, quantize_base=quantize_base)
    raw["run"]["deterministic"] = True
    raw["measure"] = {"latency": False, "samples": 0}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINOPT_FAULT")}

    def cli(*args, kill=None):
        return subprocess.run([sys.executable, "-m", "trainopt", "run", str(recipe), *map(str, args)],
                              capture_output=True, text=True, timeout=300,
                              env={**env, **({"TRAINOPT_FAULT_KILL_AT_STEP": str(kill)} if kill else {})})

    assert cli("--out", tmp_path / "clean").returncode == 0
    killed = cli("--out", tmp_path / "killed", kill=3)
    assert killed.returncode == -9, killed.stderr[-1500:]
    ckpts = sorted((tmp_path / "killed" / "stages" / "lora" / "checkpoints").iterdir())
    assert ckpts and (ckpts[-1] / "model.safetensors").stat().st_size < 200_000  # the adapters, not the model
    resumed = cli("--out", tmp_path / "killed", "--resume")
    assert resumed.returncode == 0 and "resuming lora from step 2" in resumed.stderr + resumed.stdout
    a = load_file(str(tmp_path / "clean" / "stages" / "lora" / "model" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "stages" / "lora" / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_base_in_bf16_gives_the_same_products_and_is_restored(tiny_chat_llama_dir):
    from transformers import AutoModelForCausalLM

    from trainopt.lora.spec import LoraStage
    from trainopt.lora.stage import _frozen_to_autocast_dtype, wrap

    stage = LoraStage(kind="lora", precision="bf16", rank=4)
    model = wrap(AutoModelForCausalLM.from_pretrained(str(tiny_chat_llama_dir)), stage, "causal_lm", seed=0).eval()
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)  # a non-zero adapter, as after training
    ids = torch.randint(0, 300, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits
    originals = _frozen_to_autocast_dtype(model, stage, torch.device("cpu"))
    assert originals and all(p.dtype == torch.bfloat16 for p, _ in originals)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "norm" in n or "lora" in n)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    for p, original in originals:
        p.data = original
    start = AutoModelForCausalLM.from_pretrained(str(tiny_chat_llama_dir)).state_dict()
    merged = model.merge_and_unload()
    lora_free = {k: v for k, v in merged.state_dict().items() if "proj" not in k}
    assert all(torch.equal(v, start[k]) for k, v in lora_free.items())
    assert all(v.dtype == torch.float32 for v in merged.state_dict().values())


@pytest.mark.parametrize("flag", ["dora", "rslora"])
def test_dora_and_rslora_reach_peft(tiny_chat_llama_dir, flag):
    from transformers import AutoModelForCausalLM

    from trainopt.lora.spec import LoraStage
    from trainopt.lora.stage import wrap

    stage = LoraStage(kind="lora", rank=4, **{flag: True})
    model = wrap(AutoModelForCausalLM.from_pretrained(str(tiny_chat_llama_dir)), stage, "causal_lm", seed=0)
    config = model.peft_config["default"]
    assert config.use_dora is (flag == "dora") and config.use_rslora is (flag == "rslora")
    magnitudes = [n for n, _ in model.named_parameters() if "lora_magnitude_vector" in n]
    assert bool(magnitudes) is (flag == "dora")  # DoRA's learned magnitude per output feature
    assert model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == \
        pytest.approx(stage.alpha / (stage.rank ** 0.5 if flag == "rslora" else stage.rank))


def test_a_study_searches_lora_keys(tmp_path, tiny_chat_llama_dir, definitions_dir):
    """`trainopt tune` over a lora stage's own keys: each trial trains its adapters at the rank it was given (the
    trainable count follows the rank), is scored on the held-out answer loss, and the best recipe is exported."""
    import yaml

    from trainopt.tune.study import tune

    raw = sft_recipe(tiny_chat_llama_dir, definitions_dir, max_steps=4, checkpoint_every=0, eval_every=2)
    raw["measure"] = {"latency": False, "samples": 0}
    raw["search"] = {"sampler": "grid", "trials": 2, "pruner": {"name": "none"},
                     "space": {"stages.lora.rank": {"type": "categorical", "choices": [2, 4]}}}
    s = tune(raw, out=tmp_path / "study")
    assert s["counts"]["complete"] == 2 and s["counts"]["fail"] == 0
    trained = {}
    for t in s["trials"]:
        stage = json.loads((Path(t["run_dir"]) / "report.json").read_text())["stages"][0]
        assert stage["lora"]["rank"] == t["params"]["stages.lora.rank"]
        assert t["values"] == [stage["validation_quality"]["loss"]]
        trained[stage["lora"]["rank"]] = stage["lora"]["trainable_params"]
    assert trained[4] == 2 * trained[2]  # A (r x in) and B (out x r) grow with r
    (best,) = s["best"]
    assert best["values"][0] == min(t["values"][0] for t in s["trials"])
    exported = yaml.safe_load((tmp_path / "study" / "best_recipe.yaml").read_text())
    assert exported["stages"][0]["rank"] == best["params"]["stages.lora.rank"]
    # a metric a causal LM does not report is refused before the study starts
    from trainopt.errors import RecipeError

    raw["search"]["objectives"] = [{"metric": "accuracy"}]
    with pytest.raises(RecipeError, match=r"search\.objectives\.0\.metric"):
        tune(raw, out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_merged_lora_chains_into_prune_distill_and_quantize(tmp_path, tiny_chat_llama_dir, definitions_dir):
    """SFT → merge → Wanda pruning (calibrated on the SFT rows) → a distilled student (KD on the answer tokens) →
    dynamic int8: every stage starts from the one before, is scored on the same held-out answers, and the report
    says what each did."""
    raw = sft_recipe(tiny_chat_llama_dir, definitions_dir, max_steps=4, checkpoint_every=0, eval_every=2)
    raw["stages"] += [{"kind": "prune", "name": "wanda", "method": "wanda", "sparsity": 0.5, "calibration_batches": 2},
                      {"kind": "distill", "name": "student", "teacher_stage": "lora", "student": {"num_layers": 1},
                       "train": {"max_steps": 3, "batch_size": 4, "checkpoint_every": 0, "eval_every": 3}},
                      {"kind": "quantize", "name": "int8"}]
    raw["measure"] = {"latency": False, "samples": 1, "generate_tokens": 2}
    report = run(raw, out=tmp_path / "chain", show_summary=False)
    lora, wanda, student, int8 = report["stages"]
    assert [s["name"] for s in report["stages"]] == ["lora", "wanda", "student", "int8"]
    assert wanda["pruning"]["achieved_sparsity"] == pytest.approx(0.5, abs=0.02) and wanda["effect"] == "masked"
    assert wanda["size"]["nonzero_params"] < lora["size"]["nonzero_params"]
    assert student["size"]["params"] < wanda["size"]["params"]  # one layer of two
    # training does not keep pruning masks: the report says that the student trained the zeros back
    assert any("wanda's pruned weights were trained back" in n for n in student.get("notes", []))
    assert not any("trained back" in n for n in int8.get("notes", []) + wanda.get("notes", []))
    for s in (wanda, student, int8):
        assert s["quality"]["loss"] > 0 and s["quality"]["perplexity"] > 1
        assert s["samples"] and s["samples"][0]["question"] == lora["samples"][0]["question"]
    assert student["effect"] == "smaller" and int8["effect"] in ("smaller", "accelerated")
    assert int8["size"]["disk_bytes"] < student["size"]["disk_bytes"]


def test_the_gpu_sft_recipe_runs_on_a_cpu(tmp_path, tiny_chat_llama_dir, definitions_dir):
    """sft-lora-gpu (bf16, packed rows, chunked head on the answers) on a tiny model and two steps: the recipe's keys
    hold and it trains on the CPU too (compile off here: it costs the suite ~25 s on 2 cores; the compiled LoRA path
    ran on the GPU in benchmarks/lora_vs_trainer_gpu.py)."""
    from trainopt.recipe import load_recipe

    recipe = load_recipe("sft-lora-gpu", [f"model.path={tiny_chat_llama_dir}", f"data.source={definitions_dir}",
                                          "data.block_size=64", "data.max_test_examples=16",
                                          "data.max_validation_examples=8", "stages.lora.max_steps=2",
                                          "stages.lora.batch_size=2", "stages.lora.eval_every=null",
                                          "stages.lora.checkpoint_every=0", "measure.latency=false",
                                          "measure.samples=0", "run.progress=false", "stages.lora.compile=false"])
    report = run(recipe, out=tmp_path / "gpu", show_summary=False)
    t = report["stages"][1]["training"]
    assert t["steps"] == 2 and report["stages"][1]["lora"]["merged"] is True
    assert report["stages"][1]["quality"]["loss"] > 0 and report["stages"][0]["name"] == "base"
