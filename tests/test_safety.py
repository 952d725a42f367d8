"""Untrusted files: pickled weights that would run code are refused with one line and never executed; recipes never
evaluate code; trust_remote_code is off unless the recipe asks."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import yaml

from trainopt.cli import main

from .conftest import classification_recipe


class Payload:
    """Unpickling this runs os.system: the attack a pickled checkpoint can carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_model_weights_with_code_are_refused(tmp_path, tiny_bert_dir, reviews_dir, capsys):
    evil = tmp_path / "evil"
    shutil.copytree(tiny_bert_dir, evil)
    (evil / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    torch.save({"bert.embeddings.word_embeddings.weight": Payload(marker)}, evil / "pytorch_model.bin")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(classification_recipe(evil, reviews_dir)))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("trainopt:")]  # after the run's "data:" line
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1] and "Traceback" not in err
    assert "refused to load" in err and "more than tensors" in err
    assert not marker.exists()


def test_tampered_training_checkpoint_is_refused(tmp_path, tiny_bert_dir, reviews_dir, capsys):
    """A checkpoint whose trainer.pt was replaced by a code-carrying pickle (manifest rewritten to match): --resume
    refuses it in one line instead of running it."""
    from trainopt.train.checkpoint import _sha256, latest_checkpoint

    raw = classification_recipe(tiny_bert_dir, reviews_dir, max_steps=6, checkpoint_every=3, eval_every=None)
    raw["measure"]["latency"] = False
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    # Pretend the run was killed after its step-6 checkpoint, then an attacker swapped trainer.pt.
    stage = out / "stages" / "finetune"
    (stage / "stage.json").unlink()
    (out / "report.json").unlink()
    ck = stage / "checkpoints"
    ck.mkdir(exist_ok=True)
    from trainopt.artifacts import load_saved
    from trainopt.train.checkpoint import save_checkpoint

    model = load_saved(stage / "model")[0]
    opt = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(ck, 3, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), None,
                           {"step": 3})
    marker = tmp_path / "PWNED"
    torch.save({"optimizer": Payload(marker)}, path / "trainer.pt")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["trainer.pt"] = {"bytes": (path / "trainer.pt").stat().st_size,
                                       "sha256": _sha256(path / "trainer.pt")}
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert latest_checkpoint(ck) == path
    capsys.readouterr()
    assert main(["run", str(recipe), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the stage's heading, then the error on one line
    assert err[-1].startswith("trainopt: ") and "refused to load" in err[-1] and "trainer.pt" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not marker.exists()


@pytest.mark.parametrize("text", ["model: !!python/object/apply:os.system ['touch {m}']\nstages: [{{kind: eval}}]\n",
                                  "!!python/object/new:os.system ['touch {m}']\n"])
def test_recipes_never_evaluate_code(tmp_path, capsys, text):
    marker = tmp_path / "PWNED"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text.format(m=marker))
    assert main(["check", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "malformed YAML" in err
    assert not marker.exists()


def test_remote_code_is_not_run_unless_asked(tmp_path, tiny_bert_dir, reviews_dir, capsys):
    """A model folder that ships its own Python (auto_map): without model.trust_remote_code the code never runs."""
    folder = tmp_path / "custom"
    shutil.copytree(tiny_bert_dir, folder)
    marker = tmp_path / "PWNED"
    (folder / "evil_model.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                          "from transformers import BertConfig as EvilConfig\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "evil-custom"
    cfg["auto_map"] = {"AutoConfig": "evil_model.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(cfg))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(classification_recipe(folder, reviews_dir)))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.path" in err
    assert not marker.exists()
