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
