"""Distillation: students by layer dropping or from a config, the loss terms, caching, and the stage."""

from __future__ import annotations

import pytest
import torch

from trainopt.compress.blocks import find_blocks
from trainopt.compress.distill.student import build_student, default_layers, drop_layers
from trainopt.errors import RecipeError
from trainopt.recipe import DistillStage, load_recipe

from .conftest import classification_recipe, make_reviews, write_jsonl


def test_default_layers():
    assert default_layers(6, 3) == [1, 3, 5]
    assert default_layers(30, 15) == list(range(1, 30, 2))
    assert default_layers(4, 4) == [0, 1, 2, 3]


def test_layer_dropping_copies_teacher_blocks(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    student = drop_layers(teacher, [1])
    assert student.config.num_hidden_layers == 1 and teacher.config.num_hidden_layers == 2
    s_block = find_blocks(student)[2][0]
    t_block = find_blocks(teacher)[2][1]
    for (n, a), (_, b) in zip(s_block.named_parameters(), t_block.named_parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), n  # same values, own copy
    out = student(input_ids=torch.tensor([[101, 2000, 102]]))
    assert out.logits.shape == (1, 2)


def test_layer_dropping_for_decoders_reindexes_the_cache(tiny_gpt_dir):
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(tiny_gpt_dir)
    student = drop_layers(teacher, [1])
    ids = torch.tensor([[5, 6, 7]])
    assert student.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 6)


def test_student_from_config_and_bad_layers(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    st = DistillStage(kind="distill", student={"config": {"num_hidden_layers": 1, "hidden_size": 16,
                                                          "intermediate_size": 32}})
    student, layer_map = build_student(teacher, st, "classification", 0)
    assert student.config.hidden_size == 16 and layer_map == [1]
    with pytest.raises(RecipeError, match="layers"):
        build_student(teacher, DistillStage(kind="distill", student={"layers": [1, 0]}), "classification", 0)


def test_recipe_validation():
    base = {"model": {"path": "x"}, "stages": [{"kind": "train", "name": "t"}]}
    with pytest.raises(RecipeError, match="excludes"):
        load_recipe({**base, "stages": base["stages"] + [
            {"kind": "distill", "student": {"config": {"num_hidden_layers": 1}, "num_layers": 2}}]})
    with pytest.raises(RecipeError, match="positive weight"):
        load_recipe({**base, "stages": base["stages"] + [
            {"kind": "distill", "loss": {"kd": 0, "ce": 0}}]})


@pytest.mark.parametrize("loss", [{"kd": 1.0, "ce": 0.5},
                                  {"kd": 1.0, "ce": 0.0, "hidden": 1.0, "attention": 1.0}])
def test_distill_stage_runs(tmp_path, tiny_bert_dir, loss):
    import trainopt

    d = tmp_path / "data"
    d.mkdir()
    write_jsonl(d / "train.jsonl", make_reviews(160, 1))
    write_jsonl(d / "test.jsonl", make_reviews(40, 2))
    raw = classification_recipe(tiny_bert_dir, d, epochs=1)
    raw["stages"].append({"kind": "distill", "name": "student", "student": {"num_layers": 1}, "loss": loss,
                          "train": {"epochs": 1, "batch_size": 16, "optimizer": {"lr": 1e-3},
                                    "checkpoint_every": 4}})
    report = trainopt.run(raw, out=tmp_path / "run")
    teacher, student = report["stages"]
    d = student["distillation"]
    assert d["student_layers"] == 1 and d["teacher_layers"] == 2 and d["layer_map"] == [1]
    assert d["teacher_logits_cached"] == (loss.get("hidden", 0) == 0)
    assert student["size"]["params"] < teacher["size"]["params"]
    assert student["effect"] in ("smaller", "accelerated")
    assert student["training"]["steps"] > 0 and student["vs_parent"]["stage"] == "finetune"
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / student["checkpoint"])
    assert reloaded.config.num_hidden_layers == 1


def test_kd_loss_is_zero_when_student_equals_teacher(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    from trainopt.compress.distill.losses import make_loss

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    student = drop_layers(teacher, [0, 1]).eval()  # all layers: identical function
    stage = DistillStage(kind="distill", loss={"kd": 1.0, "ce": 0.0, "hidden": 1.0})
    from trainopt.compress.distill.losses import Projections

    fn = make_loss(teacher, stage.loss, "classification", [0, 1], Projections(2, 32, 32), None)
    batch = {"input_ids": torch.tensor([[101, 2000, 2001, 102], [101, 2002, 102, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]), "labels": torch.tensor([0, 1])}
    assert fn(student, batch, 2).abs().item() < 1e-6


def test_an_attention_loss_across_pruned_heads_is_refused_before_work():
    import torch

    from trainopt.errors import RecipeError
    from trainopt.recipe import load_recipe
    from trainopt.validate import check_compat

    raw = load_recipe("quickstart").model_dump(mode="json")
    raw["stages"][2]["teacher_stage"] = "finetune"  # the quickstart prunes heads in between
    raw["stages"][2]["loss"]["attention"] = 1.0
    with pytest.raises(RecipeError) as e:
        check_compat(load_recipe(raw), torch.device("cpu"))
    assert e.value.key == "stages.2.loss.attention" and "prunes attention heads" in e.value.problem
