"""Pruning: masks (global, per layer, per row, 2:4), the cubic schedule, structured slicing that computes the
same function as zeroing, save/reload of pruned shapes, and the prune stage end to end on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from trainopt.compress.blocks import apply_structure, detect_structure, find_blocks
from trainopt.compress.prune.masks import cubic_sparsity, masks_from_scores, n_m_mask, row_mask, threshold_mask
from trainopt.compress.prune.structured import apply_plan
from trainopt.errors import RecipeError
from trainopt.recipe import load_recipe

from .conftest import classification_recipe, make_reviews, write_jsonl


def test_two_four_mask_keeps_the_two_largest_of_every_four():
    torch.manual_seed(0)
    s = torch.rand(8, 16)
    keep = n_m_mask(s)
    groups, kept = s.reshape(8, 4, 4), keep.reshape(8, 4, 4)
    assert torch.all(kept.sum(-1) == 2)
    smallest_kept = torch.where(kept, groups, torch.inf).amin(-1)
    largest_dropped = torch.where(~kept, groups, -torch.inf).amax(-1)
    assert torch.all(smallest_kept > largest_dropped)


def test_global_layer_and_row_masks_hit_the_target():
    torch.manual_seed(0)
    scores = [torch.rand(16, 32), torch.rand(32, 16) * 10]  # the second layer has larger weights
    glob = threshold_mask(scores, 0.5)
    total = sum(m.numel() for m in glob)
    assert abs(sum(int((~m).sum()) for m in glob) / total - 0.5) < 0.01
    assert (~glob[0]).float().mean() > 0.9  # one global threshold prunes mostly the small layer
    per_layer = masks_from_scores(scores, 0.5, "unstructured", "layer")
    assert all(abs((~m).float().mean().item() - 0.5) < 0.01 for m in per_layer)
    rows = row_mask(scores[0], 0.25)
    assert torch.all((~rows).sum(1) == 8)


def test_cubic_schedule():
    assert cubic_sparsity(0, 10, 110, 0.0, 0.8) == 0.0
    assert cubic_sparsity(110, 10, 110, 0.0, 0.8) == 0.8
    assert cubic_sparsity(500, 10, 110, 0.0, 0.8) == 0.8
    values = [cubic_sparsity(t, 10, 110, 0.0, 0.8) for t in range(0, 120, 5)]
    assert values == sorted(values)
    assert cubic_sparsity(60, 10, 110, 0.0, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))  # fast first, then slow


def _tiny_bert(minilm_tokenizer, heads=4, hidden=32, inter=64):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=2,
                     num_attention_heads=heads, intermediate_size=inter, max_position_embeddings=64)
    return BertForSequenceClassification(cfg).eval()


def test_structured_slicing_equals_zeroing_the_removed_parts(minilm_tokenizer):
    model = _tiny_bert(minilm_tokenizer)
    plan = {"heads": [[0, 2, 3], [1]], "ffn": [list(range(0, 64, 2)), list(range(40))]}
    zeroed = _tiny_bert(minilm_tokenizer)
    zeroed.load_state_dict(model.state_dict())
    hd = 8
    with torch.no_grad():
        for layer, block in enumerate(find_blocks(zeroed)[2]):
            for h in set(range(4)) - set(plan["heads"][layer]):
                block.attention.output.dense.weight[:, h * hd:(h + 1) * hd] = 0
            gone = sorted(set(range(64)) - set(plan["ffn"][layer]))
            block.output.dense.weight[:, gone] = 0
    apply_plan(model, plan)
    ids = torch.tensor([[101, 2023, 2001, 2307, 102, 0], [101, 2204, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).logits
        b = zeroed(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert detect_structure(model) == {"heads": [3, 1], "intermediate": [32, 40]}
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in zeroed.parameters())


def test_structured_model_saves_and_reloads(tmp_path, minilm_tokenizer):
    from trainopt.artifacts import load_saved, save_model

    model = _tiny_bert(minilm_tokenizer)
    apply_plan(model, {"heads": [[0, 1], [2, 3]], "ffn": [list(range(16))] * 2})
    assert model.config.intermediate_size == 16  # the same width everywhere: the config says it
    out = save_model(model, minilm_tokenizer, tmp_path / "m", {"task": "classification"})
    meta = json.loads((out / "trainopt.json").read_text())
    assert meta["structure"] == {"heads": [2, 2], "intermediate": [16, 16]}  # heads: BERT's config cannot say
    reloaded, _, _ = load_saved(out)
    ids = torch.tensor([[101, 2023, 2001, 102]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    fresh = _tiny_bert(minilm_tokenizer)
    apply_structure(fresh, meta["structure"])
    assert detect_structure(fresh) == meta["structure"]


def test_ffn_only_pruning_of_a_decoder_stays_a_plain_transformers_model(tmp_path, minilm_tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from trainopt.artifacts import save_model

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    apply_plan(model, {"heads": None, "ffn": [list(range(0, 64, 2))] * 2})
    out = save_model(model, minilm_tokenizer, tmp_path / "llama", {"task": "causal_lm"})
    assert "structure" not in json.loads((out / "trainopt.json").read_text())
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)


def test_recipe_validation():
    base = {"model": {"path": "x"}}
    cases = [({"kind": "prune", "method": "structured"}, "structured: block"),
             ({"kind": "prune", "method": "gradual", "pattern": "2:4"}, "gradual pruning is unstructured"),
             ({"kind": "prune", "distill": {"kd": 1.0}}, "add a train: block"),
             ({"kind": "prune", "teacher_stage": "x", "train": {"epochs": 1}}, "add a distill: block"),
             ({"kind": "prune", "sparsity": 1.0}, "out of range"),
             ({"kind": "prune", "method": "structured", "structured": {"heads": 0, "ffn": 0}}, "above 0"),
             ({"kind": "prune", "methd": "wanda"}, "did you mean 'method'")]
    for stage, message in cases:
        with pytest.raises(RecipeError, match=message):
            load_recipe({**base, "stages": [stage]})


def _run(tmp_path, tiny_bert_dir, stages, name="p"):
    from trainopt.runner import run

    data = tmp_path / "d"
    data.mkdir(exist_ok=True)
    write_jsonl(data / "train.jsonl", make_reviews(160, seed=1))
    write_jsonl(data / "test.jsonl", make_reviews(40, seed=2))
    raw = classification_recipe(tiny_bert_dir, data / "train.jsonl", epochs=1)
    raw["data"]["test_source"] = str(data / "test.jsonl")
    raw["stages"] += stages
    return run(raw, out=tmp_path / name)


def test_prune_stages_end_to_end(tmp_path, tiny_bert_dir):
    from trainopt.artifacts import load_saved

    recovery = {"epochs": 1, "batch_size": 16, "optimizer": {"lr": 1e-3}, "log_every": 5, "checkpoint_every": 4}
    report = _run(tmp_path, tiny_bert_dir, [
        {"kind": "prune", "name": "mag50", "method": "magnitude", "sparsity": 0.5, "train": recovery},
        {"kind": "prune", "name": "two-four", "from_stage": "finetune", "method": "magnitude", "pattern": "2:4"},
        {"kind": "prune", "name": "wanda", "from_stage": "finetune", "method": "wanda", "sparsity": 0.5,
         "calibration_batches": 2},
        {"kind": "prune", "name": "structured", "from_stage": "finetune", "method": "structured",
         "structured": {"heads": 0.5, "ffn": 0.5}, "calibration_batches": 2,
         "train": recovery, "distill": {"kd": 1.0, "ce": 1.0}}])
    st = {s["name"]: s for s in report["stages"]}
    for name in ("mag50", "two-four", "wanda"):
        p = st[name]["pruning"]
        assert st[name]["effect"] == "masked", name
        assert abs(p["achieved_sparsity"] - 0.5) < 0.01, (name, p["achieved_sparsity"])
        assert st[name]["size"]["nonzero_params"] < st[name]["size"]["params"]
        model, _, _ = load_saved(tmp_path / "p" / st[name]["checkpoint"])
        w = model.bert.encoder.layer[0].intermediate.dense.weight
        assert abs((w == 0).float().mean().item() - 0.5) < 0.05, name  # the zeros are in the saved weights
    assert st["two-four"]["pruning"]["sparse_kernels"]["measured"] is False  # CPU: no 2:4 kernel, says so
    w = load_saved(tmp_path / "p" / st["two-four"]["checkpoint"])[0].bert.encoder.layer[1].output.dense.weight
    assert torch.all((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2)
    s = st["structured"]
    assert s["effect"] == "smaller" and s["size"]["params"] < st["finetune"]["size"]["params"]
    assert s["pruning"]["heads_kept"] == [1, 1] and s["pruning"]["ffn_kept"] == [32, 32]
    assert s["training"]["steps"] > 0 and s["quality"]["accuracy"] is not None
    md = (tmp_path / "p" / "report.md").read_text()
    assert "Pruning: structured (taylor)" in md and "achieved 50." in md


def test_gradual_pruning_reaches_the_target_and_keeps_it(tmp_path, tiny_bert_dir):
    report = _run(tmp_path, tiny_bert_dir, [
        {"kind": "prune", "name": "gradual", "method": "gradual", "sparsity": 0.6,
         "schedule": {"start": 0.1, "end": 0.6, "every": 2},
         "train": {"epochs": 2, "batch_size": 16, "optimizer": {"lr": 1e-3}, "eval_every": 2,
                   "log_every": 5}}], name="g")
    g = report["stages"][-1]
    assert abs(g["pruning"]["achieved_sparsity"] - 0.6) < 0.01
    steps = g["training"]["total_steps"]
    assert g["training"]["best_step"] >= round(0.6 * steps)  # never restores weights from before the target


def test_gradual_pruning_from_the_pretrained_model_taught_by_the_fine_tuned_one(tmp_path, tiny_bert_dir):
    """Prune during fine-tuning from the starting model (an eval stage keeps it), distilling from the fine-tuned
    model named by teacher_stage — the teacher is that stage's model, not the pruned stage's input."""
    from trainopt.runner import run

    data = tmp_path / "d"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_reviews(160, seed=1))
    write_jsonl(data / "test.jsonl", make_reviews(40, seed=2))
    raw = classification_recipe(tiny_bert_dir, data / "train.jsonl", epochs=1)
    raw["data"]["test_source"] = str(data / "test.jsonl")
    raw["stages"] = [{"kind": "eval", "name": "pretrained"}, *raw["stages"],
                     {"kind": "prune", "name": "gradual-kd", "from_stage": "pretrained", "method": "gradual",
                      "sparsity": 0.5, "schedule": {"start": 0.0, "end": 0.5, "every": 2},
                      "teacher_stage": "finetune", "distill": {"kd": 1.0, "ce": 1.0},
                      "train": {"epochs": 2, "batch_size": 16, "optimizer": {"lr": 1e-3}, "log_every": 5}}]
    report = run(raw, out=tmp_path / "t")
    g = report["stages"][-1]
    assert g["pruning"]["recovery"] == "distill from stage finetune"
    assert abs(g["pruning"]["achieved_sparsity"] - 0.5) < 0.01 and g["vs_parent"]["stage"] == "pretrained"


def test_gradual_pruning_resumes_exactly(tmp_path, tiny_bert_dir, monkeypatch):
    """Masks live in the checkpoint: a run killed mid-schedule resumes to the same weights."""
    import subprocess
    import sys

    from trainopt.artifacts import load_saved

    data = tmp_path / "d"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_reviews(160, seed=1))
    raw = classification_recipe(tiny_bert_dir, data / "train.jsonl", epochs=1)
    raw["stages"] = [{"kind": "prune", "name": "gradual", "method": "gradual", "sparsity": 0.5,
                      "schedule": {"start": 0.0, "end": 0.8, "every": 1},
                      "train": {"epochs": 1, "batch_size": 16, "optimizer": {"lr": 1e-3}, "checkpoint_every": 2,
                                "keep_best": False}}]
    raw["run"]["deterministic"] = True
    raw["measure"]["latency"] = False
    recipe = tmp_path / "r.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "trainopt", "run", str(recipe)]
    env = {**__import__("os").environ, "TRAINOPT_FAULT_KILL_AT_STEP": "4"}
    killed = subprocess.run(cmd + ["--out", str(tmp_path / "a")], env=env, capture_output=True)
    assert killed.returncode == -9
    subprocess.run(cmd + ["--out", str(tmp_path / "a"), "--resume"], check=True, capture_output=True)
    subprocess.run(cmd + ["--out", str(tmp_path / "b")], check=True, capture_output=True)
    a = load_saved(tmp_path / "a" / "stages" / "gradual" / "model")[0].state_dict()
    b = load_saved(tmp_path / "b" / "stages" / "gradual" / "model")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_structured_heads_refused_for_grouped_kv_decoders(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainopt.compress.prune.structured import plan_structure
    from trainopt.recipe import PruneStage

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    stage = PruneStage(kind="prune", method="structured", structured={"heads": 0.5})
    with pytest.raises(RecipeError, match="ffn only"):
        plan_structure(LlamaForCausalLM(cfg), stage, [], "causal_lm", 0)


def test_wanda_input_norms_and_the_prune_command_on_a_decoder(tmp_path, tiny_gpt_dir, austen_text):
    """GPT-2 stores its Linear weights transposed (Conv1D); Wanda's norms come from the real inputs."""
    from transformers import AutoModelForCausalLM

    from trainopt.cli import main
    from trainopt.compress.prune.masks import input_sq_norms
    from trainopt.artifacts import load_saved

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt_dir).eval()
    fc = model.transformer.h[0].mlp.c_fc
    seen = []
    hook = fc.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().reshape(-1, 32)))
    batches = [{"input_ids": torch.randint(0, 200, (2, 16))} for _ in range(2)]
    norms = input_sq_norms(model, [("fc", fc)], batches)[0]
    hook.remove()
    assert torch.allclose(norms, sum((x * x).sum(0) for x in seen[:2]), rtol=1e-5)

    (tmp_path / "book.txt").write_text(austen_text)
    out = tmp_path / "run"
    assert main(["prune", str(tiny_gpt_dir), "--method", "wanda", "--pattern", "2:4", "--out", str(out),
                 "--set", f"data.source={tmp_path / 'book.txt'}", "--set", "data.block_size=32",
                 "--set", "measure.max_seconds=1", "--set", "measure.generate_tokens=4",
                 "--set", "run.progress=false"]) == 0
    report = json.loads((out / "report.json").read_text())
    dense, pruned = report["stages"]
    assert pruned["effect"] == "masked" and pruned["pruning"]["achieved_sparsity"] == 0.5
    assert pruned["quality"]["perplexity"] > 1 and "speedup_generate_b1" in pruned["vs_baseline"]
    w = load_saved(out / pruned["checkpoint"])[0].transformer.h[1].mlp.c_fc.weight.t()  # (out, in)
    assert torch.all((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2)


def test_chain_prune_distill_quantize_reloads(tmp_path, tiny_bert_dir):
    """fine-tune → structured prune → distill (student from the pruned model, teacher the fine-tuned one) → int8:
    the pruned shapes travel through layer dropping and quantization, and the final folder reloads exactly."""
    from trainopt.artifacts import load_saved
    from trainopt.predict import predict

    quick = {"epochs": 1, "batch_size": 16, "optimizer": {"lr": 1e-3}, "log_every": 5}
    report = _run(tmp_path, tiny_bert_dir, [
        {"kind": "prune", "name": "pruned", "method": "structured", "structured": {"heads": 0.5, "ffn": 0.5},
         "calibration_batches": 2},
        {"kind": "distill", "name": "student", "teacher_stage": "finetune", "student": {"layers": [1]},
         "loss": {"kd": 1.0, "ce": 1.0, "hidden": 1.0}, "train": quick},
        {"kind": "quantize", "name": "int8"}], name="chain")
    st = {s["name"]: s for s in report["stages"]}
    assert st["student"]["distillation"]["teacher_layers"] == 2 and st["student"]["distillation"]["layer_map"] == [1]
    assert st["student"]["size"]["params"] < st["pruned"]["size"]["params"] < st["finetune"]["size"]["params"]
    assert st["int8"]["size"]["disk_bytes"] < st["student"]["size"]["disk_bytes"]
    folder = tmp_path / "chain" / st["int8"]["checkpoint"]
    meta = json.loads((folder / "trainopt.json").read_text())
    assert meta["structure"]["heads"] == [1] and meta["quantization"]
    model, tok, _ = load_saved(folder)
    assert model.bert.encoder.layer[0].attention.self.query.out_features == 16
    out = predict(str(folder), ["great tasty coffee", "awful stale box"])
    assert len(out) == 2 and all(r["label"] in ("great", "other") for r in out)
    with pytest.raises(RecipeError, match="not an earlier stage"):
        load_recipe({"model": {"path": "x"}, "stages": [{"kind": "distill", "teacher_stage": "later"},
                                                        {"kind": "train", "name": "later"}]})


def test_a_pruned_model_is_a_valid_starting_model(tmp_path, minilm_tokenizer):
    """model.path may point at a structurally pruned folder: the recipe's first stage gets the pruned shapes."""
    import trainopt
    from trainopt.artifacts import save_model

    model = _tiny_bert(minilm_tokenizer)
    model.config.id2label, model.config.label2id = {0: "great", 1: "other"}, {"great": 0, "other": 1}
    apply_plan(model, {"heads": [[0], [1, 2]], "ffn": [list(range(16)), list(range(40))]})
    folder = save_model(model, minilm_tokenizer, tmp_path / "pruned",
                        {"task": "classification", "labels": ["great", "other"]})
    data = write_jsonl(tmp_path / "reviews.jsonl", make_reviews(80, seed=3))
    raw = classification_recipe(folder, data)
    raw["stages"] = [{"kind": "eval", "name": "pruned"}]
    report = trainopt.run(raw, out=tmp_path / "run")
    assert report["stages"][0]["size"]["params"] == sum(p.numel() for p in model.parameters())


def test_global_ranking_and_magnitude_importance_give_per_layer_counts(minilm_tokenizer):
    """same_per_layer: false ranks all layers together (each keeps at least one); the loader-only structure
    it produces is recorded; magnitude importance needs no gradients."""
    from trainopt.compress.prune.structured import choose, plan_structure
    from trainopt.recipe import PruneStage

    scores = [torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([10.0, 0.1, 0.1, 0.1])]
    assert [len(k) for k in choose(scores, 0.5, same_per_layer=True)] == [2, 2]
    kept = choose(scores, 0.5, same_per_layer=False)
    assert [len(k) for k in kept] == [4, 1] and kept[1] == [0]  # shares within a layer decide, not raw scale

    model = _tiny_bert(minilm_tokenizer)
    stage = PruneStage(kind="prune", method="structured",
                       structured={"heads": 0.5, "ffn": 0.5, "importance": "magnitude", "same_per_layer": False})
    plan = plan_structure(model, stage, [], "classification", 0)
    assert sum(len(h) for h in plan["heads"]) == 4 and sum(len(f) for f in plan["ffn"]) == 64
    assert all(len(h) >= 1 for h in plan["heads"])
    apply_plan(model, plan)
    assert detect_structure(model)["intermediate"] == [len(f) for f in plan["ffn"]]


def _lm_prune_recipe(model_config: dict, **prune) -> dict:
    return {"task": "causal_lm", "model": {"config": model_config, "tokenizer": "builtin:smollm2-135m"},
            "data": {"source": "builtin:austen"}, "stages": [{"kind": "train", "name": "pre"},
                                                             {"kind": "prune", "name": "p", **prune}]}


LLAMA_GQA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}


@pytest.mark.parametrize("model_config, prune, key", [
    (LLAMA_GQA, {"method": "structured", "structured": {"heads": 0.5}}, "stages.1.structured.heads"),
    ({"model_type": "gpt2", "n_embd": 18, "n_head": 2, "n_layer": 1, "vocab_size": 100},
     {"pattern": "2:4"}, "stages.1.pattern"),  # Conv1D inputs 18 wide: no 2:4 groups
    (LLAMA_GQA, {"skip": ["layers"]}, "stages.1.skip"),  # nothing left to prune
])
def test_prune_settings_the_model_cannot_take_are_refused_before_work(model_config, prune, key):
    """Checked on the model's class and shapes built on the meta device (validate.check_model), before any data is
    read or a run directory exists; the same errors the stage raises on the loaded model."""
    from trainopt.validate import check_model

    recipe = load_recipe(_lm_prune_recipe(model_config, **prune))
    with pytest.raises(RecipeError) as e:
        check_model(recipe, torch.device("cpu"))
    assert e.value.key == key
    check_model(load_recipe(_lm_prune_recipe(model_config)), torch.device("cpu"))  # magnitude pruning: fine


def test_an_attention_loss_with_pruned_heads_is_refused_from_the_recipe_alone():
    from trainopt.validate import check_compat

    raw = _lm_prune_recipe(LLAMA_GQA, method="structured", structured={"ffn": 0.5, "heads": 0.5},
                           train={"max_steps": 2}, distill={"attention": 1.0})
    with pytest.raises(RecipeError) as e:
        check_compat(load_recipe(raw), torch.device("cpu"))
    assert e.value.key == "stages.1.distill.attention"
