"""Nothing lost: --overwrite deletes only a run directory trainopt created and that holds none of the run's inputs,
--resume continues only a trainopt run, and two processes cannot write one run directory at once."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from trainopt.cli import main
from trainopt.errors import TrainoptError
from trainopt.rundir import LOCK, MARKER, claim

from .conftest import classification_recipe


@pytest.fixture
def recipe(tmp_path, tiny_bert_dir, reviews_dir):
    raw = classification_recipe(tiny_bert_dir, reviews_dir, max_steps=2, eval_every=2, checkpoint_every=2)
    raw["measure"]["latency"] = False
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip()


def test_overwrite_and_resume_refuse_a_folder_trainopt_did_not_create(tmp_path, recipe, capsys):
    user = tmp_path / "thesis"
    (user / "photos").mkdir(parents=True)
    (user / "thesis.tex").write_text("years of work")
    for flag in ("--overwrite", "--resume"):
        code, err = _cli(["run", recipe, "--out", user, flag], capsys)
        assert code == 2 and "trainopt did not create it" in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in user.iterdir()) == ["photos", "thesis.tex"]  # nothing added, nothing removed


def test_overwrite_replaces_a_run_but_never_the_data_it_reads(tmp_path, recipe, reviews_dir, capsys):
    out = tmp_path / "run"
    assert _cli(["run", recipe, "--out", out], capsys)[0] == 0
    assert (out / MARKER).is_file()
    (out / "stale.txt").write_text("from the first run")
    assert _cli(["run", recipe, "--out", out, "--overwrite"], capsys)[0] == 0
    assert not (out / "stale.txt").exists() and (out / "report.json").is_file()
    # a run whose data lives inside the folder --overwrite would delete is refused, the data kept
    inside = out / "mydata"
    inside.mkdir()
    for f in reviews_dir.iterdir():
        (inside / f.name).write_bytes(f.read_bytes())
    code, err = _cli(["run", recipe, "--out", out, "--overwrite", "--set", f"data.source={inside}"], capsys)
    assert code == 2 and "data.source" in err and (inside / "train.jsonl").is_file(), err


def test_overwrite_refuses_the_folder_it_is_run_from(tmp_path, recipe, capsys, monkeypatch):
    out = tmp_path / "run"
    assert _cli(["run", recipe, "--out", out], capsys)[0] == 0
    monkeypatch.chdir(out)
    code, err = _cli(["run", recipe, "--out", ".", "--overwrite"], capsys)
    assert code == 2 and "current directory" in err and (out / "report.json").is_file(), err


def test_a_second_writer_is_refused_while_the_first_holds_the_run(tmp_path):
    run_dir = tmp_path / "run"
    first = claim(run_dir, resume=False, overwrite=False, inputs={})
    assert (run_dir / MARKER).is_file() and (run_dir / LOCK).read_text() == str(os.getpid())
    (run_dir / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(TrainoptError, match="another trainopt process"):
        claim(run_dir, resume=False, overwrite=True, inputs={})  # would have deleted the first run's files
    assert (run_dir / "metrics.jsonl").is_file()
    first.release()
    second = claim(run_dir, resume=True, overwrite=False, inputs={})
    second.release()
    with pytest.raises(TrainoptError, match="is a file"):
        claim(run_dir / "metrics.jsonl", resume=False, overwrite=True, inputs={})


def test_tune_refuses_to_replace_a_folder_it_did_not_create_or_a_run(tmp_path, recipe, capsys):
    user = tmp_path / "notes"
    user.mkdir()
    (user / "todo.txt").write_text("keep me")
    code, err = _cli(["tune", "tune-quickstart", "--out", user, "--overwrite"], capsys)
    assert code == 2 and "trainopt did not create it" in err, err
    assert [p.name for p in user.iterdir()] == ["todo.txt"]
    run_dir = tmp_path / "run"
    claim(run_dir, resume=False, overwrite=False, inputs={}).release()  # a trainopt run directory
    (run_dir / "report.json").write_text("{}")
    code, err = _cli(["tune", "tune-quickstart", "--out", run_dir, "--overwrite"], capsys)
    assert code == 2 and "not a study directory" in err and (run_dir / "report.json").is_file(), err


def test_a_damaged_finished_stage_is_run_again_on_resume_and_a_damaged_model_folder_is_refused(
        tmp_path, tiny_bert_dir, reviews_dir, capsys):
    """A truncated stage.json or model.safetensors of a finished stage (a bad copy, a disk error) is not taken as
    done: --resume says so and runs the stage again. The same damaged folder as model.path is refused by check."""
    import shutil

    from trainopt.cli import main

    raw = classification_recipe(tiny_bert_dir, reviews_dir, max_steps=3, eval_every=None, checkpoint_every=0)
    raw["measure"]["latency"] = False
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    weights = out / "stages/finetune/model/model.safetensors"
    for damaged in (out / "stages/finetune/stage.json", weights):
        damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
        assert main(["run", str(recipe), "--out", str(out), "--resume"]) == 0
        assert "running the stage again" in capsys.readouterr().err
        assert json.loads((out / "stages/finetune/stage.json").read_text())["name"] == "finetune"
    copy = tmp_path / "copy"
    shutil.copytree(out / "stages/finetune/model", copy)
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes()[:1000])
    assert main(["check", str(recipe), "--set", f"model.path={copy}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.path" in err[0] and "damaged" in err[0]


DAMAGED_META = [
    "{not json",
    "[1, 2]",
    '{"structure": {"heads": "all", "intermediate": [4]}}',
    '{"labels": "pos,neg"}',
    '{"quantization": 8}',
    '{"task": "translation"}',
    '{"sft": {"template": "yaml"}}',
]
DAMAGED_CONFIG = [
    "[1, 2]",
    {"num_hidden_layers": 10 ** 9},
    {"vocab_size": 10 ** 13},
    {"hidden_size": "big"},
]


def test_a_model_folder_with_a_damaged_trainopt_json_or_config_is_refused_in_one_line(
        tmp_path, tiny_bert_dir, reviews_dir, capsys):
    """trainopt.json and config.json come from disk and may be hand-edited: check and predict each refuse a damaged
    one in one line naming the file (exit 2), never a traceback or an out-of-memory kill."""
    import shutil

    raw = classification_recipe(tiny_bert_dir, reviews_dir, max_steps=1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    cases = [("trainopt.json", m) for m in DAMAGED_META] + [("config.json", c) for c in DAMAGED_CONFIG]
    for i, (name, content) in enumerate(cases):
        folder = tmp_path / f"m{i}"
        shutil.copytree(tiny_bert_dir, folder)
        if isinstance(content, dict):
            config = json.loads((folder / "config.json").read_text())
            content = json.dumps({**config, **content})
        (folder / name).write_text(content)
        for args in (["check", recipe, "--set", f"model.path={folder}"], ["predict", folder, "--text", "tasty"]):
            code, err = _cli(args, capsys)
            assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (name, content, args, err)
