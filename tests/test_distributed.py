"""Data-parallel training under torchrun on CPU (gloo, 2 processes): the same loss curve as one process with the same
global batch, rank 0 alone writes, and a killed 2-process run resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from trainopt.train.monitor import read_metrics

from .conftest import classification_recipe

pytestmark = pytest.mark.distributed

# Tolerance: the two runs add the same gradients in a different order (an all-reduce vs accumulation), so they
# agree to float32 rounding, which 20 Adam steps amplify a little.
RTOL_LOSS, ATOL_WEIGHTS = 1e-4, 1e-4


def _run(args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINOPT_FAULT")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "trainopt", "run", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def _recipe(path, tiny_bert_dir, reviews_dir, grad_accum, **stage):
    raw = classification_recipe(tiny_bert_dir, reviews_dir, epochs=2, batch_size=8, grad_accum=grad_accum,
                                eval_every=7, checkpoint_every=4, log_every=1)
    raw["stages"][0].update(stage)
    raw["model"]["dropout"] = 0.0  # per-rank dropout masks would differ from one process's
    raw["run"]["deterministic"] = True
    raw["measure"]["latency"] = False
    path.write_text(yaml.safe_dump(raw))
    return path


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r.get("stage") == "finetune" and "loss" in r}


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_bert_dir, reviews_dir):
    one = _run([_recipe(tmp_path / "one.yaml", tiny_bert_dir, reviews_dir, 2), "--out", tmp_path / "one"])
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run([_recipe(tmp_path / "two.yaml", tiny_bert_dir, reviews_dir, 1), "--out", tmp_path / "two",
                "--nproc", "2"])
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) >= 20
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=RTOL_LOSS), step
    wa = load_file(tmp_path / "one/stages/finetune/model/model.safetensors")
    wb = load_file(tmp_path / "two/stages/finetune/model/model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < ATOL_WEIGHTS
    report = json.loads((tmp_path / "two/report.json").read_text())
    t = report["stages"][0]["training"]
    assert t["world_size"] == 2 and t["steps"] == json.loads((tmp_path / "one/report.json").read_text())[
        "stages"][0]["training"]["steps"]
    # Rank 0 alone wrote: one metrics line per logged step, no duplicates from rank 1.
    steps = [r["step"] for r in read_metrics(tmp_path / "two") if r.get("stage") == "finetune" and "loss" in r]
    assert len(steps) == len(set(steps))
    # Gradients all-reduced in bf16 (small buckets): the same curve to bf16 rounding, and the rounding did act.
    bf = _run([_recipe(tmp_path / "bf.yaml", tiny_bert_dir, reviews_dir, 1, ddp_comm="bf16", ddp_bucket_mb=0.05),
               "--out", tmp_path / "bf", "--nproc", "2"])
    assert bf.returncode == 0, bf.stderr[-3000:]
    c = _losses(tmp_path / "bf")
    assert c.keys() == a.keys() and all(c[s] == pytest.approx(a[s], rel=2e-2) for s in a)
    wc = load_file(tmp_path / "bf/stages/finetune/model/model.safetensors")
    diff = max((wc[k] - wb[k]).abs().max().item() for k in wb)
    assert 0 < diff < 5e-2


@pytest.fixture(scope="module")
def clean_ddp(tmp_path_factory, tiny_bert_dir):
    """(recipe, run dir) of an uninterrupted 2-process run: the reference for the kill tests."""
    from .conftest import make_reviews, write_jsonl

    d = tmp_path_factory.mktemp("ddp")
    (d / "reviews").mkdir()
    write_jsonl(d / "reviews" / "train.jsonl", make_reviews(240, seed=1))
    write_jsonl(d / "reviews" / "test.jsonl", make_reviews(60, seed=2))
    recipe = _recipe(d / "r.yaml", tiny_bert_dir, d / "reviews", 1)
    clean = _run([recipe, "--out", d / "clean", "--nproc", "2"])
    assert clean.returncode == 0, clean.stderr[-2000:]
    return recipe, d / "clean"


def _same_final_weights(a, b) -> bool:
    wa = load_file(a / "stages/finetune/model/model.safetensors")
    wb = load_file(b / "stages/finetune/model/model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow  # `make test-slow`; the default suite resumes under torchrun in the two tests below (restart, FSDP2)
def test_killed_two_process_run_resumes(tmp_path, clean_ddp):
    recipe, clean = clean_ddp
    killed = _run([recipe, "--out", tmp_path / "k", "--nproc", "2"], {"TRAINOPT_FAULT_KILL_AT_STEP": "10"})
    assert killed.returncode != 0 and not (tmp_path / "k" / "report.json").exists()
    resumed = _run([recipe, "--out", tmp_path / "k", "--nproc", "2", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming finetune from step 8" in resumed.stderr
    assert _same_final_weights(clean, tmp_path / "k")


def test_nproc_validates_before_launching(tmp_path, tiny_bert_dir, reviews_dir):
    raw = classification_recipe(tiny_bert_dir, reviews_dir, epochs=-1)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    p = _run([path, "--nproc", "2", "--out", tmp_path / "o"])
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "stages.0.epochs" in p.stderr


def test_a_killed_rank_is_restarted_and_the_run_resumes(tmp_path, clean_ddp):
    """Rank 1 dies (SIGKILL) at step 10 under `--max-restarts 1`: torchrun restarts both workers, they resume from
    the step-8 checkpoint, and the run ends bit-identical to an uninterrupted 2-process run."""
    recipe, clean = clean_ddp
    p = _run([recipe, "--out", tmp_path / "k", "--nproc", "2", "--max-restarts", "1"],
             {"TRAINOPT_FAULT_KILL_AT_STEP": "10", "TRAINOPT_FAULT_RANK": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming finetune from step 8" in p.stderr
    assert _same_final_weights(clean, tmp_path / "k")


def test_spike_recovery_agrees_across_ranks(tmp_path, tiny_bert_dir, reviews_dir):
    """A loss spike injected on rank 1 only: the all-reduced loss spikes on every rank, so both roll back together
    (one rollback, the run completes, no rank hangs)."""
    recipe = _recipe(tmp_path / "r.yaml", tiny_bert_dir, reviews_dir, 1)
    raw = yaml.safe_load(recipe.read_text())
    raw["stages"][0]["recovery"] = {"min_history": 5}
    raw["stages"][0]["max_grad_norm"] = None
    recipe.write_text(yaml.safe_dump(raw))
    p = _run([recipe, "--out", tmp_path / "s", "--nproc", "2"],
             {"TRAINOPT_FAULT_SPIKE_AT_STEP": "10", "TRAINOPT_FAULT_RANK": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    t = json.loads((tmp_path / "s/report.json").read_text())["stages"][0]["training"]
    assert t["rollbacks"] == 1 and t["lr_scale"] == 0.5 and t["world_size"] == 2
    (event,) = [r for r in read_metrics(tmp_path / "s") if r.get("event") == "rollback_spike"]
    assert event["step"] == 10 and event["to_step"] == 8


def _same_loss_curve(run_a, run_b, steps: int, rel: float) -> None:
    a = {r["step"]: r["loss"] for r in read_metrics(run_a) if "loss" in r}
    b = {r["step"]: r["loss"] for r in read_metrics(run_b) if "loss" in r}
    assert a.keys() == b.keys() and len(a) == steps
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=rel), step


def _lm_recipe(path, tiny_gpt_dir, book, grad_accum, **extra):
    raw = {"name": "lm", "task": "causal_lm", "model": {"path": str(tiny_gpt_dir), "dropout": 0.0},
           "data": {"source": str(book), "block_size": 32, "validation_fraction": 0.1, "test_fraction": 0.1},
           "stages": [{"kind": "train", "name": "pre", "max_steps": 12, "batch_size": 4, "grad_accum": grad_accum,
                       "optimizer": {"lr": 1e-3}, "eval_every": 5, "checkpoint_every": 4, "log_every": 1, **extra}],
           "run": {"seed": 0, "progress": False, "deterministic": True}, "measure": {"latency": False}}
    path.write_text(yaml.safe_dump(raw))
    return path


def test_fsdp_matches_one_process_and_resumes_bit_identically(tmp_path, tiny_gpt_dir, austen_text):
    """FSDP2 (fully_shard per block, sharded optimizer state) on 2 processes, with the chunked LM loss, follows one
    process's loss curve (plain loss, same global batch); its checkpoints are gathered full state dicts, and a run
    killed at step 6 resumes from step 4 to the same final weights bit for bit (that run without resharding after
    the forward, which must not change a bit)."""
    book = tmp_path / "book.txt"
    book.write_text(austen_text * 2)
    one = _run([_lm_recipe(tmp_path / "one.yaml", tiny_gpt_dir, book, 2), "--out", tmp_path / "one"])
    assert one.returncode == 0, one.stderr[-2000:]
    fsdp = _lm_recipe(tmp_path / "fsdp.yaml", tiny_gpt_dir, book, 1, parallel="fsdp", lm_loss="chunked",
                      lm_loss_chunk=50)
    two = _run([fsdp, "--out", tmp_path / "two", "--nproc", "2"])
    assert two.returncode == 0, two.stderr[-3000:]
    _same_loss_curve(tmp_path / "one", tmp_path / "two", 12, rel=RTOL_LOSS)
    wa = load_file(tmp_path / "one/stages/pre/model/model.safetensors")
    wb = load_file(tmp_path / "two/stages/pre/model/model.safetensors")
    assert wa.keys() == wb.keys() and max((wa[k] - wb[k]).abs().max().item() for k in wa) < ATOL_WEIGHTS
    # The killed and resumed runs keep each block's gathered parameters until its backward (fsdp_reshard: false):
    # the same numerics, so the resumed weights must still equal the uninterrupted run's bit for bit.
    fsdp = _lm_recipe(tmp_path / "fsdp_keep.yaml", tiny_gpt_dir, book, 1, parallel="fsdp", lm_loss="chunked",
                      lm_loss_chunk=50, fsdp_reshard=False)
    killed = _run([fsdp, "--out", tmp_path / "k", "--nproc", "2"], {"TRAINOPT_FAULT_KILL_AT_STEP": "6"})
    assert killed.returncode != 0
    ckpt = load_file(tmp_path / "k/stages/pre/checkpoints/step-00000004/model.safetensors")
    ckpt = {k.removeprefix("model."): v for k, v in ckpt.items()}  # saved through the LM-loss wrapper
    assert all(ckpt[k].shape == wa[k].shape for k in wa)  # full tensors, not shards (+ the tied head)
    resumed = _run([fsdp, "--out", tmp_path / "k", "--nproc", "2", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming pre from step 4" in resumed.stderr
    wk = load_file(tmp_path / "k/stages/pre/model/model.safetensors")
    assert all(torch.equal(wb[k], wk[k]) for k in wb)


def test_fsdp_with_compile_compiles_block_by_block_and_matches(tmp_path, tiny_gpt_dir, austen_text):
    """FSDP2 + compile: each transformer block's forward and the loss are compiled on their own (the whole model is
    not), and the 2-process loss curve still follows one eager process with the same global batch (compiled CPU
    kernels may round differently: a looser tolerance than the eager comparison)."""
    book = tmp_path / "book.txt"
    book.write_text(austen_text * 2)
    one = _run([_lm_recipe(tmp_path / "one.yaml", tiny_gpt_dir, book, 2, max_steps=6), "--out", tmp_path / "one"])
    assert one.returncode == 0, one.stderr[-2000:]
    fsdp = _lm_recipe(tmp_path / "fsdp.yaml", tiny_gpt_dir, book, 1, parallel="fsdp", compile=True,
                      fsdp_reshard=False, max_steps=6, checkpoint_every=0)
    two = _run([fsdp, "--out", tmp_path / "two", "--nproc", "2"])
    assert two.returncode == 0, two.stderr[-3000:]
    _same_loss_curve(tmp_path / "one", tmp_path / "two", 6, rel=1e-3)
    report = json.loads((tmp_path / "two/report.json").read_text())
    assert report["stages"][0]["training"]["world_size"] == 2
    assert report["stages"][0]["training"]["compiled"] == "2 blocks + loss"


def test_lora_under_ddp_matches_one_process(tmp_path, tiny_chat_llama_dir, definitions_dir):
    """LoRA on packed SFT rows, 2 processes × 2 rows against 1 process × 2 rows × 2 accumulation steps: the same loss
    curve and the same adapters (the loss is normalised by the global batch's target tokens on both)."""
    from .conftest import sft_recipe

    def recipe(name, grad_accum):
        raw = sft_recipe(tiny_chat_llama_dir, definitions_dir, merge=False, dropout=0.0, batch_size=2,
                         grad_accum=grad_accum, max_steps=6, keep_best=False, checkpoint_every=3, eval_every=3)
        raw["run"]["deterministic"] = True
        raw["measure"] = {"latency": False, "samples": 0}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    one = _run([recipe("one", 2), "--out", tmp_path / "one"])
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run([recipe("two", 1), "--out", tmp_path / "two", "--nproc", "2"])
    assert two.returncode == 0, two.stderr[-3000:]

    def losses(run_dir):
        return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r.get("stage") == "lora" and "loss" in r}

    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) == 6
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=RTOL_LOSS), step
    wa = load_file(tmp_path / "one/stages/lora/model/adapter_model.safetensors")
    wb = load_file(tmp_path / "two/stages/lora/model/adapter_model.safetensors")
    assert wa.keys() == wb.keys() and max((wa[k] - wb[k]).abs().max().item() for k in wa) < ATOL_WEIGHTS
    assert json.loads((tmp_path / "two/report.json").read_text())["stages"][0]["training"]["world_size"] == 2
