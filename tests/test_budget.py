"""Quality budgets (budget.py): a compression stage over its budget is flagged before its result is written, `fail`
stops the chain (the report still written), and with no budget a stage that lost more than 1 pt is flagged."""

from __future__ import annotations

import json

import pytest

from trainopt.budget import OverBudget, drop_of
from trainopt.runner import run

from .conftest import classification_recipe


def _chain(tiny_bert_dir, reviews_dir, **top):
    recipe = classification_recipe(tiny_bert_dir, reviews_dir, epochs=8, eval_every=12, optimizer={"lr": 3e-3})
    recipe["data"]["validation_fraction"] = 0.2
    recipe["stages"] += [{"kind": "prune", "name": "gentle", "method": "magnitude", "sparsity": 0.05},
                         {"kind": "prune", "name": "brutal", "method": "magnitude", "sparsity": 0.999,
                          "embeddings": True, "classifier": True}]
    recipe["measure"]["latency"] = False
    recipe["measure"]["classical"] = False
    recipe.update(top)
    return recipe


def test_drop_is_points_or_a_relative_increase():
    assert drop_of("accuracy", 0.90, 0.88) == pytest.approx(0.02)
    assert drop_of("perplexity", 20.0, 21.0) == pytest.approx(0.05)


def test_budget_flags_the_stage_over_it_and_fail_stops_the_chain(tmp_path, tiny_bert_dir, reviews_dir, capsys):
    recipe = _chain(tiny_bert_dir, reviews_dir, budget={"max_drop": 0.02, "metric": "accuracy"})
    report = run(recipe, out=tmp_path / "warn")
    base, gentle, brutal = report["stages"]
    assert "budget" not in base and base["validation_quality"]["accuracy"] is not None
    assert gentle["budget"]["over"] is False and gentle["budget"]["reference_stage"] == "finetune"
    b = brutal["budget"]
    assert b["over"] is True
    assert b["split"] == "validation" and b["metric"] == "accuracy"
    assert b["drop"] == pytest.approx(b["reference"] - b["value"], abs=1e-4) and b["drop"] > 0.02
    assert any(n.startswith("OVER BUDGET") for n in brutal["notes"])
    md = (tmp_path / "warn" / "report.md").read_text()
    assert "✗ over budget" in md and "## Quality lost" in md
    said = capsys.readouterr()
    assert "brutal is over its quality budget" in said.out + said.err

    recipe["budget"]["on_over_budget"] = "fail"
    with pytest.raises(OverBudget, match="stage brutal lost more than its quality budget"):
        run(recipe, out=tmp_path / "fail")
    written = json.loads((tmp_path / "fail" / "report.json").read_text())
    assert [s["name"] for s in written["stages"]] == ["finetune", "gentle", "brutal"]
    assert json.loads((tmp_path / "fail" / "stages/brutal/stage.json").read_text())["budget"]["over"] is True
    with pytest.raises(OverBudget):  # a resume stops at the same stage, it does not carry on past it
        run(recipe, out=tmp_path / "fail", resume=True)


def test_a_stage_budget_replaces_the_recipe_budget_and_no_budget_still_flags(tmp_path, tiny_bert_dir, reviews_dir):
    recipe = _chain(tiny_bert_dir, reviews_dir)
    recipe["stages"][2]["budget"] = {"max_drop": 1.0}
    report = run(recipe, out=tmp_path / "r")
    _, gentle, brutal = report["stages"]
    assert "budget" not in gentle and brutal["budget"]["over"] is False and brutal["budget"]["max_drop"] == 1.0
    # no budget on gentle, but the brutal stage's test quality fell by more than 1 pt: flagged all the same
    assert brutal["vs_baseline"]["quality_delta"] < -0.01
    assert any(n.startswith("QUALITY LOST") for n in brutal["notes"])
    assert "✗ lost > 1 pt" in (tmp_path / "r" / "report.md").read_text()


def test_budget_search_keeps_the_fastest_weaker_setting_that_fits(tmp_path, tiny_bert_dir, reviews_dir):
    """on_over_budget: search — the 99.9%-sparse stage is over budget; Optuna draws weaker sparsities, each re-run
    from the stage's input model and scored on validation; the kept one fits the budget, the report lists every
    trial, and recipe.chosen.yaml holds the chosen sparsity (a recipe that loads)."""
    from trainopt.recipe import load_recipe

    recipe = _chain(tiny_bert_dir, reviews_dir)
    recipe["stages"] = [recipe["stages"][0], recipe["stages"][2]]
    recipe["stages"][1]["budget"] = {"max_drop": 0.02, "metric": "accuracy", "on_over_budget": "search", "trials": 4}
    recipe["measure"].update(latency=True, batch_sizes=[1, 8], repeats=3, max_seconds=0.5, interleave=False)
    report = run(recipe, out=tmp_path / "s")
    base, brutal = report["stages"]
    b = brutal["budget"]
    search = b["search"]
    assert search["trials"][0]["params"] == "as written" and len(search["trials"]) == 5
    assert search["trials"][0]["value"] < base["validation_quality"]["accuracy"] - 0.02  # why it searched
    kept = next(t for t in search["trials"] if t["trial"] == search["chosen"])
    assert kept["fits"] and search["fits"] and b["over"] is False
    fitting = [t for t in search["trials"][1:] if t["fits"]]
    # a Pareto point: no fitting trial is both clearly faster (beyond the 5% tie) and no larger
    assert not any(t["latency_ms"] * 1.05 < kept["latency_ms"] and t["weight_bytes"] <= kept["weight_bytes"]
                   for t in fitting)
    assert brutal["pruning"]["target_sparsity"] == kept["params"]["sparsity"] < 0.999
    assert brutal["validation_quality"]["accuracy"] == kept["value"]
    chosen = load_recipe(tmp_path / "s" / "recipe.chosen.yaml")
    assert chosen.stages[1].sparsity == kept["params"]["sparsity"] and chosen.stages[1].name == "brutal"
    assert not (tmp_path / "s" / "stages/brutal/search").exists()


def test_each_technique_draws_only_weaker_settings():
    """weaker(trial, info) per technique (optuna's FixedTrial stands for a drawn trial): never stronger than written,
    and always a valid stage of its kind."""
    from optuna.trial import FixedTrial

    from trainopt.compress.distill.spec import DistillStage
    from trainopt.compress.prune.spec import PruneStage
    from trainopt.compress.quantize.spec import QuantizeStage

    info = {"num_layers": 6, "block_prefix": "bert.encoder.layer", "head": ["classifier"]}
    p = PruneStage(kind="prune", method="structured", structured={"heads": 0.5, "ffn": 0.6})
    w = p.weaker(FixedTrial({"heads": 0.2, "ffn": 0.0}), info)
    assert (w.structured.heads, w.structured.ffn) == (0.2, 0.0)
    assert p.weaker(FixedTrial({"heads": 0.0, "ffn": 0.0}), info).structured.ffn == 0.05  # never a no-op stage
    assert PruneStage(kind="prune", sparsity=0.999).weaker(FixedTrial({"sparsity": 0.99}), info).sparsity == 0.99
    d = DistillStage(kind="distill", student={"num_layers": 4}, train={"epochs": 3})
    w = d.weaker(FixedTrial({"num_layers": 5, "epochs_x": 1.5}), info)
    assert w.student.num_layers == 5 and w.train.epochs == 4.5
    with pytest.raises(ValueError, match="layer-dropped"):
        DistillStage(kind="distill", student={"config": {"hidden_size": 64}}).weaker(FixedTrial({}), info)
    q = QuantizeStage(kind="quantize", skip=["pooler"])
    w = q.weaker(FixedTrial({"float_first_blocks": 1, "float_last_blocks": 2, "quantize_embeddings": False,
                             "float_head": True}), info)
    assert w.skip == ["pooler", "bert.encoder.layer.0.", "bert.encoder.layer.4.", "bert.encoder.layer.5.",
                      "classifier"] and w.embeddings is False


def test_weight_bytes_counts_masks_and_int8_weights():
    """The search's size objective: a pruning mask's zeros count nothing, int8 weights one byte each (quantized
    tensors, which count_nonzero cannot read, are counted as stored)."""
    import torch

    from trainopt.budget_search import weight_bytes

    dense = torch.nn.Sequential(torch.nn.Linear(64, 64))
    with torch.no_grad():
        dense[0].weight[:32] = 0
    assert weight_bytes(dense) == (64 * 32 + 64) * 4
    q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(64, 64)), {torch.nn.Linear},
                                               dtype=torch.qint8)
    assert 0 < weight_bytes(q) < 64 * 64 * 4
