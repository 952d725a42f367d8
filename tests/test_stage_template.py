"""The shared stage template (Composer's one-test-template-per-algorithm): every technique in the technique table
runs in one tiny chain through `trainopt run` and is held to the same contract — a report entry that reads back as a
typed StageResult, a label from the allowed set, measured cost, size and speed, a saved folder that loads and
predicts, its technique's own report section, a bad value of its own refused before any run directory exists, and
a kill inside every stage of the chain (a training step, or a stage's end before or after its folder is saved)
resumed to the uninterrupted chain's results.
Adding a technique to trainopt/techniques.py without a case here fails `test_every_technique_has_a_case`."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import yaml

from trainopt.artifacts import load_saved
from trainopt.cli import main
from trainopt.results import StageResult
from trainopt.techniques import TECHNIQUES

from .conftest import classification_recipe, make_reviews, write_jsonl


@dataclass(frozen=True)
class Case:
    stage: dict  # the stage in the template chain (small settings)
    effects: set[str]  # the labels it may get on this tiny model (speed on a shared CPU decides some)
    section: str | None  # the technique's own block in its report entry
    bad: tuple[str, str]  # (key under the stage, value) that the recipe check refuses


TRAIN = {"max_steps": 3, "batch_size": 16, "eval_every": 3, "checkpoint_every": 2, "log_every": 1}
CASES = {
    "eval": Case({"kind": "eval", "name": "before"}, {"baseline"}, None, ("from_stage", "nosuch")),
    "train": Case({"kind": "train", "name": "train", "optimizer": {"lr": 1e-3}, **TRAIN}, {"unchanged"}, "training",
                  ("max_steps", "0")),
    "lora": Case({"kind": "lora", "name": "lora", "rank": 4, "optimizer": {"lr": 1e-3}, **TRAIN}, {"unchanged"},
                 "lora", ("rank", "0")),
    "prune": Case({"kind": "prune", "name": "prune", "method": "magnitude", "sparsity": 0.5}, {"masked"}, "pruning",
                  ("sparsity", "1.5")),
    "distill": Case({"kind": "distill", "name": "distill", "student": {"num_layers": 1}, "train": TRAIN},
                    {"smaller"}, "distillation", ("loss.temperature", "0")),
    "quantize": Case({"kind": "quantize", "name": "quantize", "method": "dynamic_int8"}, {"smaller", "accelerated"},
                     "quantization", ("group_size", "7")),
    # the distilled student in onnxruntime's int8 (after quantize: an export starts from the stage it names)
    "export": Case({"kind": "export", "name": "onnx-int8", "from_stage": "distill", "format": "onnx",
                    "quantize": "int8"}, {"smaller", "accelerated"}, "export", ("quantize", "int4")),
}
ELSEWHERE = {"augment": "changes the training data, not the model: tests/test_augment.py runs it through the runner"}
ORDER = ["eval", "train", "lora", "prune", "distill", "quantize", "export"]
# the kill points of the stages that do not train (stage name: phase), alternating the two phases along the chain
KILLS_IN_STAGE = ["before:ran", "prune:measured", "quantize:ran", "onnx-int8:measured"]


def test_every_technique_has_a_case():
    assert set(TECHNIQUES) == set(CASES) | set(ELSEWHERE)
    assert set(ORDER) == set(CASES)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("template")
    data = root / "reviews"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_reviews(160, seed=1))
    write_jsonl(data / "test.jsonl", make_reviews(40, seed=2))
    raw = classification_recipe(tiny_bert_dir, data)
    raw["stages"] = [CASES[kind].stage for kind in ORDER]
    raw["run"]["tensorboard"] = False
    recipe = root / "chain.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = root / "run"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    return recipe, out, json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("kind", ORDER)
def test_stage_meets_the_report_contract(chain, kind):
    _, out, report = chain
    case, index = CASES[kind], ORDER.index(kind)
    entry = report["stages"][index]
    assert entry["kind"] == kind and entry["effect"] in case.effects, entry["effect"]
    on_disk = json.loads((out / "stages" / entry["name"] / "stage.json").read_text())
    # vs_classical joins the entry when the report is assembled (the classical row is fit after the chain)
    assert entry["vs_classical"]["classical"] == report["classical"]["quality"]["f1_macro"]
    entry = {k: v for k, v in entry.items() if k != "vs_classical"}
    assert on_disk == entry and StageResult.from_json(entry).to_json() == entry  # typed round trip, nothing lost
    assert entry["size"]["params"] > 0 and entry["size"]["disk_bytes"] > 0
    assert all(entry["speed"][f"latency_ms_b{b}_p50"] > 0 for b in (1, 8)) and entry["speed"]["device"] == "cpu"
    assert entry["cost"]["wall_s"] >= 0 and entry["cost"]["eval_wall_s"] >= 0
    assert 0.0 <= entry["quality"]["accuracy"] <= 1.0
    if case.section is not None:
        assert isinstance(entry[case.section], dict) and entry[case.section]
    if index:
        parent = case.stage.get("from_stage") or report["stages"][index - 1]["name"]
        assert entry["vs_parent"]["stage"] == parent
        assert entry["vs_baseline"]["quality_metric"] == "accuracy"


@pytest.mark.parametrize("kind", ORDER)
def test_saved_stage_loads_and_predicts(chain, kind):
    _, out, report = chain
    entry = report["stages"][ORDER.index(kind)]
    model, tokenizer, meta = load_saved(out / entry["checkpoint"], "classification")
    batch = tokenizer(["a great product", "arrived broken"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        logits = model.eval()(**batch).logits
    assert logits.shape == (2, len(report["data"]["labels"])) and torch.isfinite(logits).all()
    assert meta["labels"] == report["data"]["labels"]


@pytest.mark.parametrize("kind", ORDER)
def test_a_bad_value_is_refused_before_work(chain, kind, tmp_path, capsys):
    recipe, _, _ = chain
    key, value = CASES[kind].bad
    full = f"stages.{ORDER.index(kind)}.{key}"
    out = tmp_path / "never"
    assert main(["run", str(recipe), "--out", str(out), "--set", f"{full}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and full in err, err
    assert not out.exists()


def test_a_kill_in_every_stage_resumes_to_the_same_chain(chain, tmp_path):
    """SIGKILL after step 2 (its checkpoint written) of each training stage in turn, and in each other stage either
    once its work is done but nothing is saved (`ran`) or once its folder is saved, evaluated and timed but its
    stage.json not written (`measured`): every `--resume` goes on from the killed training stage's checkpoint or runs
    the killed stage again, the finished stages are not run again, and the chain ends with the uninterrupted chain's
    quality in every stage."""
    import os
    import subprocess
    import sys

    recipe, _, clean = chain
    out = tmp_path / "killed"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TRAINOPT_FAULT")},
           "TRAINOPT_FAULT_KILL_AT_STEP": "2",
           "TRAINOPT_FAULT_KILL_IN_STAGE": ",".join(KILLS_IN_STAGE)}
    args = [sys.executable, "-m", "trainopt", "run", str(recipe), "--out", str(out)]
    trained = [k for k in ORDER if k in ("train", "lora", "distill")]
    kills = 0
    while True:
        proc = subprocess.run(args + (["--resume"] if kills else []), capture_output=True, text=True, env=env,
                              timeout=600)
        if proc.returncode != -9:
            break
        kills += 1
        assert kills <= len(trained) + len(KILLS_IN_STAGE), "killed more often than there are kill points"
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert kills == len(trained) + len(KILLS_IN_STAGE)
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == [s["name"] for s in clean["stages"]]
    for got, want in zip(report["stages"], clean["stages"]):
        assert got["quality"]["accuracy"] == want["quality"]["accuracy"], got["name"]
        assert got["quality"]["loss"] == pytest.approx(want["quality"]["loss"], rel=1e-5, abs=1e-6), got["name"]
        if got["kind"] in trained:
            assert got["training"]["resumed_from_step"] == 2, got["name"]
