"""End to end: the quickstart path (real reviews, tiny model), the LM path, and every command on the result."""

from __future__ import annotations

import json
import os

import pytest

from trainopt.cli import main

from .conftest import need_builtin

CONTRACT_STAGE_KEYS = {"name", "kind", "effect", "quality", "size", "speed", "cost", "vs_baseline", "checkpoint"}


def quickstart_overrides(tiny_bert_dir) -> list[str]:
    """The built-in quickstart chain on a tiny 2-layer model and a slice of the real reviews."""
    sets = [f"model.path={tiny_bert_dir}", "data.max_train_examples=300", "data.max_test_examples=100",
            "stages.finetune.eval_every=5", "stages.finetune.checkpoint_every=5", "stages.finetune.optimizer.lr=1e-3",
            "stages.pruned.calibration_batches=2", "stages.pruned.train.eval_every=5",
            "stages.student.student.num_layers=1", "stages.student.train.epochs=1",
            "stages.student.train.eval_every=5", "measure.max_seconds=1", "run.progress=false"]
    return [x for s in sets for x in ("--set", s)]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory, tiny_bert_dir):
    """The built-in quickstart recipe, with a tiny model and a slice of the real fine-food reviews."""
    need_builtin("fine_foods")
    out = tmp_path_factory.mktemp("qs") / "run"
    assert main(["run", "quickstart", "--out", str(out), *quickstart_overrides(tiny_bert_dir)]) == 0
    return out


def test_quickstart_report_contract(quickstart_run):
    report = json.loads((quickstart_run / "report.json").read_text())
    assert report["trainopt_version"] and report["recipe"]["name"] == "quickstart"
    assert {"device", "name", "threads", "torch"} <= report["hardware"].keys()
    stage, pruned, student, int8 = report["stages"]
    assert all(CONTRACT_STAGE_KEYS <= s.keys() for s in report["stages"])
    assert pruned["kind"] == "prune" and pruned["effect"] == "smaller" and pruned["pruning"]["heads_kept"] == [1, 1]
    assert student["kind"] == "distill" and student["distillation"]["student_layers"] == 1
    assert pruned["size"]["params"] < stage["size"]["params"] and student["size"]["params"] < pruned["size"]["params"]
    assert int8["kind"] == "quantize" and int8["effect"] in ("smaller", "accelerated")
    assert int8["vs_baseline"]["size_ratio"] < 0.5 and int8["vs_parent"]["stage"] == "student"
    assert stage["effect"] == "baseline" and stage["kind"] == "train"
    q = stage["quality"]
    assert 0.0 <= q["accuracy"] <= 1.0 and 0.0 <= q["f1_macro"] <= 1.0 and q["perplexity"] is None
    assert sum(map(sum, q["confusion_matrix"])) == 100 and set(q["per_class"]) == {"great", "other"}
    assert stage["size"]["params"] >= stage["size"]["nonzero_params"] > 0
    assert stage["size"]["disk_bytes"] > 0
    for key in ("latency_ms_b1_p50", "latency_ms_b32_p50", "throughput_items_per_s"):
        assert stage["speed"][key] > 0
    assert stage["cost"]["wall_s"] > 0 and stage["cost"]["tokens_per_s"] > 0 and stage["cost"]["mfu"] is None
    assert stage["vs_baseline"] == {"quality_metric": "accuracy", "quality_delta": 0.0, "speedup_b1": 1.0,
                                    "speedup_b32": 1.0, "size_ratio": 1.0}
    assert report["data"]["rows"]["test"] == 100 and report["data"]["cleaning"]["html_cleaned"] > 0
    md = (quickstart_run / "report.md").read_text()
    assert "| finetune | train | baseline |" in md and "| int8 | quantize |" in md and "Confusion matrix" in md



def test_quickstart_report_has_the_classical_baseline_row(quickstart_run):
    """TF-IDF + logistic regression trained on the same 300 reviews: its own test figures (the same metric code),
    its C chosen on validation macro-F1, and every stage's verdict against it, in JSON, Markdown and on the console."""
    report = json.loads((quickstart_run / "report.json").read_text())
    c = report["classical"]
    assert c["kind"] == "classical" and c["name"].startswith("tf-idf")
    assert 0.5 <= c["quality"]["accuracy"] <= 1.0 and 0.0 < c["quality"]["f1_macro"] <= 1.0
    assert c["settings"]["C"] in (0.5, 2.0, 8.0, 32.0) and len(c["settings"]["tried"]) == 8
    best = max(t["validation_f1_macro"] for t in c["settings"]["tried"])
    assert any(t["C"] == c["settings"]["C"] and t["validation_f1_macro"] == best for t in c["settings"]["tried"])
    assert c["size"]["disk_bytes"] > 0 and c["speed"]["latency_ms_b1_p50"] > 0
    for s in report["stages"]:
        vs = s["vs_classical"]
        assert vs["metric"] == "f1_macro" and vs["classical"] == c["quality"]["f1_macro"]
        assert vs["stage"] == s["quality"]["f1_macro"] and vs["beats"] == (vs["stage"] > vs["classical"])
    md = (quickstart_run / "report.md").read_text()
    assert "| tf-idf + logistic regression | classical | reference |" in md and "## Classical baseline" in md
    assert json.loads((quickstart_run / "classical.json").read_text()) == c
    assert (quickstart_run / "metrics.jsonl").stat().st_size > 0
    assert any((quickstart_run / "tensorboard").glob("events.out.tfevents.*"))
    assert (quickstart_run / "recipe.yaml").is_file()
    assert not (quickstart_run / "stages/finetune/checkpoints").exists()


def test_saved_model_loads_with_plain_transformers(quickstart_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = quickstart_run / "stages/finetune/model"
    model = AutoModelForSequenceClassification.from_pretrained(path)
    AutoTokenizer.from_pretrained(path)
    assert model.config.id2label == {0: "great", 1: "other"}
    assert (path / "model.safetensors").is_file()


def test_predict_eval_report_commands(quickstart_run, capsys, tmp_path):
    model = quickstart_run / "stages/finetune/model"
    assert main(["predict", str(model), "--text", "Delicious, will buy again", "--text", "stale", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2 and lines[0]["label"] in ("great", "other")
    assert sum(lines[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)

    f = tmp_path / "in.txt"
    f.write_text("good\n\nbad coffee\n")
    assert main(["predict", str(model), "--file", str(f)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2

    out = tmp_path / "eval"
    assert main(["eval", str(model), "--out", str(out), "--set", "data.max_test_examples=100",
                 "--set", "measure.max_seconds=1", "--set", "run.progress=false"]) == 0
    ev = json.loads((out / "report.json").read_text())["stages"][0]
    trained = json.loads((quickstart_run / "report.json").read_text())["stages"][0]
    assert ev["kind"] == "eval" and ev["quality"]["accuracy"] == trained["quality"]["accuracy"]

    (quickstart_run / "report.md").unlink()
    assert main(["report", str(quickstart_run)]) == 0
    assert (quickstart_run / "report.md").is_file()
    assert main(["report", str(tmp_path)]) == 2


def test_resume_skips_finished_stages(quickstart_run, tiny_bert_dir, capsys):
    before = json.loads((quickstart_run / "report.json").read_text())["stages"]
    code = main(["run", "quickstart", "--out", str(quickstart_run), "--resume",
                 *quickstart_overrides(tiny_bert_dir)])
    assert code == 0 and "already done" in capsys.readouterr().err
    # the finished stages are read back (typed) and written out again unchanged
    assert json.loads((quickstart_run / "report.json").read_text())["stages"] == before
    code = main(["run", "quickstart", "--out", str(quickstart_run), "--resume", "--set", "run.seed=3"])
    assert code == 2 and "differs" in capsys.readouterr().err


def test_lm_scratch_path_lowers_perplexity(tmp_path):
    need_builtin("austen")
    out = tmp_path / "lm"
    code = main(["run", "lm-scratch", "--out", str(out), "--set", "model.config.n_layer=1",
                 "--set", "model.config.n_embd=64", "--set", "model.config.n_head=2",
                 "--set", "model.train_tokenizer.vocab_size=512", "--set", "data.block_size=32",
                 "--set", "data.max_train_examples=400", "--set", "data.max_validation_examples=20",
                 "--set", "data.max_test_examples=40", "--set", "stages.pretrain.max_steps=150",
                 "--set", "stages.pretrain.batch_size=16", "--set", "stages.pretrain.eval_every=50",
                 "--set", "measure.max_seconds=1", "--set", "measure.seq_len=32", "--set", "run.progress=false"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    untrained, trained = report["stages"]
    assert untrained["effect"] == "baseline" and trained["effect"] == "unchanged"
    assert trained["quality"]["perplexity"] < 0.5 * untrained["quality"]["perplexity"]
    assert trained["vs_baseline"]["quality_metric"] == "perplexity" and trained["vs_baseline"]["quality_delta"] < 0
    # the classical row: a bigram model over the same token ids, scored on the same test blocks
    c = report["classical"]
    assert c["kind"] == "classical" and 1 < c["quality"]["perplexity"] < 512 and c["settings"]["bigram_weight"] > 0
    assert untrained["vs_classical"]["beats"] is False  # a random model is worse than counting bigrams
    assert trained["vs_classical"]["classical"] == c["quality"]["perplexity"]
    assert "| bigram (interpolated, add-one) | classical | reference |" in (out / "report.md").read_text()

    model = out / "stages/pretrain/model"
    assert main(["predict", str(model), "--text", "It is a truth", "--max-new-tokens", "5", "--json"]) == 0


def test_train_command_runs_only_the_training_stage(tmp_path, tiny_bert_dir, reviews_dir):
    import yaml

    from .conftest import classification_recipe

    raw = classification_recipe(tiny_bert_dir, reviews_dir, epochs=1)
    raw["stages"] = [{"kind": "eval", "name": "before"}, raw["stages"][0]]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "t"
    assert main(["train", str(recipe), "--out", str(out), "--set", "stages.finetune.batch_size=32"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["finetune"]
    assert report["recipe"]["stages"][0]["batch_size"] == 32


def test_html_report_is_self_contained_and_renders(quickstart_run, tmp_path):
    """report.html: the stage table, the charts inline, nothing fetched; headless Chromium renders it."""
    import re
    import shutil
    import subprocess

    page = (quickstart_run / "report.html").read_text()
    for name in ("finetune", "pruned", "student", "int8"):
        assert f"<td>{name}</td>" in page
    assert page.count("<svg") >= 3 and "<script" not in page  # trade-off chart, loss curves, lr/throughput
    assert not re.search(r"""(src|href)=["']https?:""", page)  # self-contained: opened from disk, offline
    assert "Confusion matrices" in page and ("class='worse'" in page or "class='better'" in page)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("TRAINOPT_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required here (TRAINOPT_REQUIRE_CHROMIUM) but not installed")
        pytest.skip("no chromium (Debian package chromium) to render the page")
    url = (quickstart_run / "report.html").resolve().as_uri()
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Stages side by side" in dom.stdout and dom.stdout.count("<svg") >= 3 and "<table" in dom.stdout
    assert "Uncaught" not in dom.stderr and "CONSOLE" not in dom.stderr
    shot = tmp_path / "report.png"
    r = subprocess.run([*args, "--window-size=1280,2000", f"--screenshot={shot}", url], capture_output=True,
                       timeout=120)
    assert r.returncode == 0 and shot.stat().st_size > 50_000  # a rendered page, not a blank one
