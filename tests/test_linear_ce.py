"""The chunked linear + cross-entropy (train/linear_ce.py): the same loss and gradients as the plain head + loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from trainopt.train.linear_ce import chunked_linear_cross_entropy
from trainopt.train.loss import TrainLoss


@pytest.mark.parametrize("autocast", [False, True])
def test_chunked_loss_and_gradients_equal_the_plain_ones(autocast):
    torch.manual_seed(0)
    x = torch.randn(300, 32, requires_grad=True)
    w = torch.randn(101, 32, requires_grad=True)
    b = torch.randn(101, requires_grad=True)
    t = torch.randint(0, 101, (300,))
    t[::7] = -100  # ignored positions (padding)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ref = F.cross_entropy((x @ w.t() + b).float(), t, reduction="sum")
    ref_grads = torch.autograd.grad(ref * 0.5, [x, w, b])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = chunked_linear_cross_entropy(x, w, b, t, chunk=64)  # 5 chunks, the last one short
    grads = torch.autograd.grad(out * 0.5, [x, w, b])
    tol = 1e-2 if autocast else 1e-5  # bf16 partial sums are added per chunk instead of once
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == r.dtype and (g - r).abs().max() <= tol * r.abs().max()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # evaluation
        assert chunked_linear_cross_entropy(x, w, b, t, chunk=64).item() == pytest.approx(ref.item(), rel=1e-5)


def _head_inputs(seed: int, ignore_every: int):
    """300 positions of width 32 into a vocabulary of 101 (not a multiple of 64), every n-th target ignored."""
    torch.manual_seed(seed)
    x = torch.randn(300, 32, requires_grad=True)
    w = torch.randn(101, 32, requires_grad=True)
    b = torch.randn(101, requires_grad=True)
    t = torch.randint(0, 101, (300,))
    t[::ignore_every] = -100
    return x, w, b, t


@pytest.mark.parametrize("autocast", [False, True])
def test_vocabulary_padding_changes_nothing_but_the_matmul_shapes(autocast):
    """vocab_multiple=64: the head's matmuls run on 101 → 128 rows (zeros, logits masked); loss and gradients equal
    the unpadded chunked ones (fp32: to rounding; bf16: within the bf16 tolerance), gradient shapes unchanged."""
    x, w, b, t = _head_inputs(seed=0, ignore_every=7)
    out = {}
    for multiple in (1, 64):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = chunked_linear_cross_entropy(x, w, b, t, chunk=64, vocab_multiple=multiple)
        out[multiple] = (loss, torch.autograd.grad(loss, [x, w, b]))
    tol = 1e-2 if autocast else 1e-5
    assert out[64][0].item() == pytest.approx(out[1][0].item(), rel=tol)
    for g, r in zip(out[64][1], out[1][1]):
        assert g.shape == r.shape and g.dtype == r.dtype and (g - r).abs().max() <= tol * r.abs().max()


@pytest.mark.parametrize("multiple", [1, 64])
def test_compiled_form_gives_the_eager_numbers(monkeypatch, multiple):
    """Under torch.compile the chunk's gradient is built without in-place writes (so inductor can fuse it); both forms
    give the same loss and gradients, padding columns and ignored rows included."""
    x, w, b, t = _head_inputs(seed=1, ignore_every=5)
    runs = []
    for compiling in (False, True):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda c=compiling: c)
        loss = chunked_linear_cross_entropy(x, w, b, t, chunk=64, vocab_multiple=multiple)
        runs.append((loss, torch.autograd.grad(loss, [x, w, b])))
    assert runs[1][0].item() == pytest.approx(runs[0][0].item(), rel=1e-6)
    for g, r in zip(runs[1][1], runs[0][1]):
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-6)


def test_train_loss_module_equals_the_plain_loss(tiny_gpt_dir):
    from transformers import AutoModelForCausalLM

    from trainopt.evaluate import lm_loss_sum

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt_dir)
    ids = torch.randint(0, model.config.vocab_size, (3, 20))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[0, -5:] = -100
    ref = lm_loss_sum(model(input_ids=ids, attention_mask=mask).logits, labels)
    ref.backward()
    ref_grad = model.transformer.wte.weight.grad.clone()  # tied to the head: both paths of the gradient
    model.zero_grad()
    fused = TrainLoss(model, "causal_lm", lm_loss="chunked", chunk=16)(input_ids=ids, attention_mask=mask, labels=labels)
    fused.backward()
    assert fused.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(model.transformer.wte.weight.grad, ref_grad, atol=1e-6)
    model.zero_grad()  # the same with the vocabulary padded to a multiple of 64 inside the head
    padded = TrainLoss(model, "causal_lm", lm_loss="chunked", chunk=16, vocab_multiple=64)(
        input_ids=ids, attention_mask=mask, labels=labels)
    padded.backward()
    assert padded.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(model.transformer.wte.weight.grad, ref_grad, atol=1e-6)
    model.zero_grad()  # the head on the targeted positions only (SFT prompts have none): the same loss and gradients
    labels[1, :12] = -100
    ref = lm_loss_sum(model(input_ids=ids, attention_mask=mask).logits, labels)
    ref.backward()
    ref_grad = model.transformer.wte.weight.grad.clone()
    model.zero_grad()
    sparse = TrainLoss(model, "causal_lm", lm_loss="chunked", chunk=16, sparse_targets=True)(
        input_ids=ids, attention_mask=mask, labels=labels)
    sparse.backward()
    assert sparse.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(model.transformer.wte.weight.grad, ref_grad, atol=1e-6)
    full = TrainLoss(model, "causal_lm")(input_ids=ids, attention_mask=mask, labels=labels)  # the logits' loss
    assert full.item() == pytest.approx(ref.item(), rel=1e-6)
    out = TrainLoss(model, "causal_lm")(input_ids=ids, attention_mask=mask)  # no labels: the model's own forward (evaluation)
    assert out.logits.shape == (3, 20, model.config.vocab_size)


def test_train_stage_with_chunked_loss_matches_the_full_loss(tmp_path, tiny_gpt_dir, austen_text):
    from trainopt import run
    from trainopt.train.monitor import read_metrics

    book = tmp_path / "book.txt"
    book.write_text(austen_text)
    losses = {}
    for kind in ("full", "chunked"):
        raw = {"name": kind, "task": "causal_lm", "model": {"path": str(tiny_gpt_dir), "dropout": 0.0},
               "data": {"source": str(book), "block_size": 32},
               "stages": [{"kind": "train", "name": "pre", "max_steps": 6, "batch_size": 4, "lm_loss": kind,
                           "lm_loss_chunk": 40, "log_every": 1, "auto_micro_batch": kind == "chunked"}],
               "run": {"seed": 0, "progress": False}, "measure": {"latency": False}}
        run(raw, out=tmp_path / kind)
        losses[kind] = [r["loss"] for r in read_metrics(tmp_path / kind) if "loss" in r]
    assert len(losses["full"]) == 6 and losses["chunked"] == pytest.approx(losses["full"], rel=1e-4)


@pytest.mark.parametrize("stage, key", [
    ({"lm_loss": "chunked"}, "stages.0.lm_loss"),  # a classification model
    ({"parallel": "fsdp", "precision": "fp16"}, "stages.0.precision"),
    ({"parallel": "fsdp", "ddp_comm": "bf16"}, "stages.0.ddp_comm"),  # DDP's knobs do nothing under FSDP
    ({"parallel": "fsdp", "ddp_bucket_mb": 50}, "stages.0.ddp_bucket_mb"),
    ({"fsdp_reshard": False}, "stages.0.fsdp_reshard"),  # an FSDP knob under DDP / one process
    ({"lm_loss_vocab_multiple": 64}, "stages.0.lm_loss_vocab_multiple"),  # no chunked head to pad
])
def test_bad_acceleration_settings_name_the_key(tmp_path, tiny_bert_dir, reviews_dir, stage, key):
    from trainopt.errors import RecipeError
    from trainopt.runner import validate

    from .conftest import classification_recipe

    raw = classification_recipe(tiny_bert_dir, reviews_dir, **stage)
    raw["run"]["device"] = "cpu"
    with pytest.raises(RecipeError) as info:
        validate(raw)
    assert info.value.key == key


def test_lm_loss_inside_a_distill_stage_is_refused(tmp_path, tiny_gpt_dir, austen_text):
    from trainopt.errors import RecipeError
    from trainopt.runner import validate

    book = tmp_path / "book.txt"
    book.write_text(austen_text)
    raw = {"task": "causal_lm", "model": {"path": str(tiny_gpt_dir)}, "data": {"source": str(book)},
           "stages": [{"kind": "distill", "student": {"num_layers": 1}, "train": {"lm_loss": "chunked"}}]}
    with pytest.raises(RecipeError) as info:
        validate(yaml.safe_load(yaml.safe_dump(raw)))
    assert info.value.key == "stages.0.train.lm_loss"


def test_static_compile_passes_dynamic_false_and_allows_a_graph_per_width(tmp_path, tiny_bert_dir, reviews_dir,
                                                                          monkeypatch):
    """compile_dynamic: static → torch.compile(dynamic=False), and dynamo's recompile limit covers one graph per
    padded batch width (max_length 32 / pad_to_multiple_of 8 = 4 widths); auto → dynamic=None (torch's default)."""
    import torch

    from trainopt import run

    from .conftest import classification_recipe

    calls = []

    def fake_compile(module, **kwargs):  # record and run eagerly (compiling on CPU is slow and not under test)
        calls.append(kwargs)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    # dynamo's own patch context: monkeypatch's undo leaves its config without the key (it then "does not exist")
    with torch._dynamo.config.patch(recompile_limit=8):
        for mode, expected in (("static", False), ("auto", None)):
            raw = classification_recipe(tiny_bert_dir, reviews_dir, compile=True, compile_dynamic=mode, max_steps=2,
                                        checkpoint_every=0)
            raw["data"]["pad_to_multiple_of"] = 8
            raw["run"]["device"] = "cpu"
            raw["measure"]["latency"] = False
            run(raw, out=tmp_path / mode)
            assert calls[-1]["dynamic"] is expected
        assert torch._dynamo.config.recompile_limit >= 32 // 8 + 8


def test_pad_to_multiple_of_is_refused_for_causal_lm(tmp_path, tiny_gpt_dir, austen_text):
    from trainopt.errors import RecipeError
    from trainopt.runner import validate

    book = tmp_path / "book.txt"
    book.write_text(austen_text)
    raw = {"task": "causal_lm", "model": {"path": str(tiny_gpt_dir)},
           "data": {"source": str(book), "pad_to_multiple_of": 8}, "stages": [{"kind": "train"}]}
    with pytest.raises(RecipeError) as info:
        validate(raw)
    assert info.value.key == "data.pad_to_multiple_of"
