"""Recipes: the built-ins validate; every kind of bad input is one line naming the key, and exit status 2."""

from __future__ import annotations

import shutil

import pytest

from trainopt.cli import main
from trainopt.errors import RecipeError
from trainopt.recipe import builtin_recipe_names, load_recipe

from .conftest import classification_recipe


def test_builtin_recipes_validate():
    names = builtin_recipe_names()
    assert {"quickstart", "lm-scratch", "lm-finetune"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.stages


def _error(raw_or_name, overrides=None) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(raw_or_name, overrides)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


BASE = {"model": {"path": "builtin:minilm-l6"}, "stages": [{"kind": "train", "name": "ft"}]}


@pytest.mark.parametrize("override, expect", [
    ("stages.0.optimizer.lrr=0.1", ["stages.0.optimizer.lrr", "unknown key", "did you mean 'lr'"]),
    ("stages.ft.epoch=2", ["stages.0.epoch", "did you mean 'epochs'"]),
    ("dta={}", ["dta", "did you mean 'data'"]),
    ("stages.0.epochs=two", ["stages.0.epochs", "wrong type"]),
    ("stages.0.optimizer.lr=-1", ["stages.0.optimizer.lr", "out of range", "greater than 0"]),
    ("data.validation_fraction=0.9", ["data.validation_fraction", "out of range"]),
    ("stages.0.precision=fp8", ["stages.0.precision", "not allowed", "'fp32'"]),
    ("stages.0.kind=prunee", ["stages.0.kind", "unknown or missing stage kind", "train"]),
    ("model.config={model_type: gpt2}", ["model", "exclusive"]),
    ("stages.0.schedule={warmup_steps: 3, warmup_ratio: 0.1}", ["schedule.warmup_steps", "not both"]),
    ("name=bad name!", ["name", "not a valid name"]),
    # values the schema took and the run crashed on (OverflowError, file name too long): refused up front
    ("run.seed=100000000000000000000000", ["run.seed", "too large", "2147483647"]),
    ("run.threads=1.0e+30", ["run.threads"]),
    ("stages.0.recovery.window=99999999999999999999", ["stages.0.recovery.window", "too large"]),
    ("measure.batch_sizes=[1000000000000]", ["measure.batch_sizes", "too large"]),
    ("stages.0.optimizer.eps=.inf", ["stages.0.optimizer.eps", "finite"]),
    ("model.dropout=.nan", ["model.dropout", "finite"]),
    ("name=" + "a" * 300, ["name", "up to 100"]),
])
def test_bad_values_are_one_line(override, expect):
    msg = _error(BASE, [override])
    for part in expect:
        assert part in msg, msg


def test_duplicate_stage_names():
    raw = {**BASE, "stages": [{"kind": "train", "name": "a"}, {"kind": "eval", "name": "a"}]}
    assert "unique" in _error(raw)


def test_overrides_by_name_and_index():
    r = load_recipe(BASE, ["stages.ft.epochs=3", "stages.0.batch_size=8", "data.max_length=64",
                           "run.seed=7"])
    assert (r.stages[0].epochs, r.stages[0].batch_size, r.data.max_length, r.run.seed) == (3, 8, 64, 7)
    assert "no list item named" in _error(BASE, ["stages.fine.epochs=3"])
    assert "out of range" in _error(BASE, ["stages.5.epochs=3"])
    assert "key.path=value" in _error(BASE, ["stages.0.epochs"])


def test_every_training_names_its_errors_by_index():
    """One spelling for every error key, also for errors raised once the model is loaded: `stages.<i>[.sub].<key>`,
    kept through the copies the loop makes (auto micro-batch) and nested trainings run as train stages."""
    from trainopt.train.spec import as_train_stage

    r = load_recipe("quickstart")
    assert r.stages[0].key_of("fp8") == "stages.0.fp8"
    assert r.stages[0].model_copy(update={"batch_size": 4}).key_of("fp8") == "stages.0.fp8"
    assert as_train_stage(r.stages[1].train, "pruned").key_of("lm_loss") == "stages.1.train.lm_loss"
    assert as_train_stage(r.stages[2].train, "student").key_of("attention") == "stages.2.train.attention"


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  path: x\n stages: [\n")
    assert "malformed YAML" in _error(str(bad)) and "line" in _error(str(bad))
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    assert "mapping" in _error(str(lst))
    assert "did you mean 'quickstart'" in _error("quickstrat")


def _cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def test_cli_errors_exit_2_and_create_nothing(tmp_path, capsys, tiny_bert_dir, reviews_dir):
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(classification_recipe(tiny_bert_dir, reviews_dir)))
    broken = tmp_path / "broken-model"  # a model folder whose config.json is cut short
    shutil.copytree(tiny_bert_dir, broken)
    (broken / "config.json").write_text((broken / "config.json").read_text()[:40])
    cases = [
        ["--set", "stages.0.optimizer.lrr=1"],                 # unknown key
        ["--set", "data.source=/no/such/file.jsonl"],          # missing file
        ["--set", "data.text_column=body"],                    # missing column
        ["--set", "stages.0.precision=fp16"],                  # incompatible with a CPU
        ["--set", "model.path=builtin:minilm"],                # unknown built-in
        ["--set", "stages.0.metric=bleu"],                     # not a metric of the task
        ["--set", "data.validation_fraction=0", "--set", "stages.0.early_stopping={patience: 2}"],
        # what depends on the model itself is checked on its class (meta device) before work starts too
        ["--set", "stages.0.attention=flash_attention_2"],     # flash-attn 2 is not installed here
        ["--set", f"model.path={broken}"],                     # unreadable config.json
    ]
    keys = ["stages.0.optimizer.lrr", "data.source", "data.text_column", "stages.0.precision", "model.path",
            "stages.0.metric", "stages.0.early_stopping", "stages.0.attention", "model.path"]
    for extra, key in zip(cases, keys):
        code, err = _cli(["run", str(recipe), "--out", str(out), *extra], capsys)
        assert code == 2, err
        assert len(err.splitlines()) == 1 and key in err, err
        assert not out.exists()


def test_cli_existing_run_dir_needs_resume_or_overwrite(tmp_path, capsys, tiny_bert_dir, reviews_dir):
    import yaml

    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(classification_recipe(tiny_bert_dir, reviews_dir)))
    code, err = _cli(["run", str(recipe), "--out", str(out)], capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert (out / "something").exists()


def test_an_unknown_home_directory_is_a_one_line_error():
    from trainopt.recipe import check_paths

    with pytest.raises(RecipeError) as e:
        check_paths(load_recipe({**BASE, "data": {"source": "~nosuchuser-trainopt/x.jsonl"}}))
    assert e.value.key == "data.source" and "no such user" in e.value.problem


def test_yaml_on_and_off_mean_the_switch_names():
    """YAML 1.1 reads on / off as booleans: `--set ...async_checkpoint=off` must mean "off", not fail."""
    raw = {"name": "t", "model": {"path": "x"}, "stages": [{"kind": "train", "name": "a"}]}
    recipe = load_recipe(raw, overrides=["stages.0.async_checkpoint=off", "stages.0.fp8=off"])
    assert recipe.stages[0].async_checkpoint == "off" and recipe.stages[0].fp8 == "off"
    assert load_recipe(raw, overrides=["stages.0.async_checkpoint=on"]).stages[0].async_checkpoint == "on"


@pytest.mark.parametrize("text,words", [
    ("name: a\nname: b\n", "given twice"),
    ("run: {seed: " + "9" * 5000 + "}\n", "number trainopt cannot read"),
    ("model: {path: x, config: " + "[" * 3000 + "]" * 3000 + "}\n", "nested too deeply"),
    ("model: {path: x, config: " + "[" * 40 + "]" * 40 + "}\n", "more than 32 levels"),
    ("".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}" if i else "x"] * 9) + "]\n" for i in range(7))
     + "model: {path: x, config: {bomb: *l6}}\n", "expands to more than 100,000 values"),
])
def test_hostile_yaml_is_one_line_error_before_anything_expands(tmp_path, capsys, text, words):
    """Duplicate keys, 5,000-digit integers, deep nesting and alias bombs (9**7 values: 4.8M, inside model.config)
    are refused by the loader in one line with status 2 — never a traceback, never GBs of memory."""
    path = tmp_path / "r.yaml"
    path.write_text(text + "stages: [{kind: train}]\n" + ("" if "model:" in text else "model: {path: x}\n"))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_a_classification_recipe_on_text_without_labels_names_the_label_column(capsys):
    assert main(["check", "quickstart", "--set", "data={source: builtin:austen}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.label_column" in err[0] and "task: causal_lm" in err[0]


def test_a_device_or_a_pipe_as_data_source_is_refused_before_reading(tmp_path, capsys):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for src in ("/dev/zero", str(fifo)):
        assert main(["check", "quickstart", "--set", f"data.source={src}"]) == 2
        assert "not a regular file or folder" in capsys.readouterr().err


def test_a_model_config_key_the_config_class_does_not_know_is_refused(capsys):
    """`n_layers` for GPT-2's `n_layer` would be a stray attribute that changes nothing: one line, the nearest key."""
    assert main(["check", "lm-scratch", "--set", "model.config.n_layers=3"]) == 2
    err = capsys.readouterr().err
    assert "model.config.n_layers" in err and "did you mean 'n_layer'" in err
    assert main(["check", "lm-scratch", "--set", "model.config.hidden_size=128",
                 "--set", "model.config.n_head=4"]) == 0  # an attribute_map alias is a known key
