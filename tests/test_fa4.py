"""attention: fa4 — what can be checked without a Hopper GPU. FA4's kernels run on CUDA 9.x/10.x only (their speed
and numerics on an H200: benchmarks/RESULTS.md, `benchmarks/attention_kernels_gpu.py`); here its two entry points
are replaced by their mathematical definitions, so that everything trainopt adds around them — the custom ops'
layouts, fake shapes and autograd, the transformers dispatch, compile without graph breaks, the refusals — is
exercised against PyTorch's own attention."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from trainopt.train import fa4


class _Reference:
    """FA4's contract in plain PyTorch: (B, S, H, D) tensors, forward → (out, lse (B, H, S) fp32), backward →
    (dq, dk, dv) from the saved output and log-sum-exp. Causal masking is bottom-right aligned, as FA4's."""

    calls = 0

    def _scores(self, q, k, scale, causal):
        s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
        if causal:
            sq, sk = q.shape[1], k.shape[1]
            mask = torch.ones(sq, sk, dtype=torch.bool).tril(sk - sq)
            s = s.masked_fill(~mask, float("-inf"))
        return s

    def fwd(self, q, k, v, scale, causal):
        type(self).calls += 1
        s = self._scores(q, k, scale, causal)
        lse = torch.logsumexp(s, dim=-1)
        out = torch.einsum("bhqk,bkhd->bqhd", torch.exp(s - lse[..., None]), v.float())
        return out.to(q.dtype), lse

    def bwd(self, q, k, v, out, dout, lse, scale, causal):
        p = torch.exp(self._scores(q, k, scale, causal) - lse[..., None])  # recomputed from lse, as FA4 does
        do = dout.float()
        dv = torch.einsum("bhqk,bqhd->bkhd", p, do)
        dp = torch.einsum("bqhd,bkhd->bhqk", do, v.float())
        delta = (do * out.float()).sum(-1).transpose(1, 2)  # (B, H, S)
        ds = p * (dp - delta[..., None]) * scale
        dq = torch.einsum("bhqk,bkhd->bqhd", ds, k.float())
        dk = torch.einsum("bhqk,bqhd->bkhd", ds, q.float())
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@pytest.fixture
def reference(monkeypatch):
    monkeypatch.setattr(fa4, "kernels", _Reference())
    _Reference.calls = 0
    return _Reference


def _gpt2(attn: str):
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=97, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, attn_implementation=attn)
    return GPT2LMHeadModel(cfg)


def test_the_ops_match_pytorch_attention_forward_and_backward_on_strided_views(reference):
    torch.manual_seed(0)
    x = torch.randn(2, 12, 3, 2, 8)  # (B, S, qkv, H, D): q, k, v are strided views, as in GPT-2
    q, k, v = (x[:, :, i].transpose(1, 2).detach().requires_grad_(True) for i in range(3))
    out, weights = fa4.attention_forward(torch.nn.Module(), q, k, v, None, scaling=0.3)
    assert weights is None and out.shape == (2, 12, 2, 8)  # (B, S, H, D), what transformers expects back
    qr, kr, vr = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(qr, kr, vr, is_causal=True, scale=0.3).transpose(1, 2)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    for a, b in ((q, qr), (k, kr), (v, vr)):
        torch.testing.assert_close(a.grad, b.grad)


def test_a_gpt2_model_switched_to_fa4_keeps_its_weights_and_matches_sdpa(reference):
    sdpa, model = _gpt2("sdpa"), _gpt2("sdpa")
    model.set_attn_implementation(fa4.register())
    assert model.config._attn_implementation == fa4.KEY
    assert model.state_dict().keys() == sdpa.state_dict().keys()
    ids = torch.randint(0, 97, (3, 20))
    loss = model(input_ids=ids, labels=ids).loss
    ref = sdpa(input_ids=ids, labels=ids).loss
    assert reference.calls == 2  # one per layer: the model really ran the registered kernel
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    loss.backward()
    ref.backward()
    for (name, p), r in zip(model.named_parameters(), sdpa.parameters()):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_compiled_the_attention_is_one_opaque_op_per_layer_and_adds_no_graph_break(reference):
    import torch._dynamo as dynamo

    sdpa, model = _gpt2("sdpa"), _gpt2("sdpa")
    model.set_attn_implementation(fa4.register())
    ids = torch.randint(0, 97, (2, 16))
    dynamo.reset()
    plain = dynamo.explain(lambda i: sdpa(input_ids=i, labels=i).loss)(ids)
    explained = dynamo.explain(lambda i: model(input_ids=i, labels=i).loss)(ids)
    assert explained.graph_break_count == plain.graph_break_count  # (transformers' loss function breaks once)
    graph = "\n".join(str(g.graph) for g in explained.graphs)
    assert graph.count("trainopt.fa4_fwd") == 2
    eager = model(input_ids=ids, labels=ids).loss
    compiled = torch.compile(lambda i: model(input_ids=i, labels=i).loss)
    torch.testing.assert_close(compiled(ids), eager, rtol=1e-4, atol=1e-4)


def test_what_fa4_cannot_run_is_refused_with_the_reason(reference):
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="padding mask"):
        fa4.attention_forward(torch.nn.Module(), q, q, q, torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="dropout"):
        fa4.attention_forward(torch.nn.Module(), q, q, q, None, dropout=0.1)
    assert "CUDA" in fa4.why_unavailable(torch.device("cpu")) or "not installed" in fa4.why_unavailable(
        torch.device("cpu"))


def test_the_recipe_check_refuses_fa4_where_it_cannot_run():
    import trainopt
    from trainopt.errors import RecipeError
    from trainopt.validate import check_compat

    recipe = trainopt.load_recipe("gpt2-124m", ["stages.0.attention=fa4"])
    with pytest.raises(RecipeError) as e:
        check_compat(recipe, torch.device("cpu"))
    assert e.value.key.endswith(".attention") and "fa4" in e.value.problem


def test_training_with_fa4_uses_it_and_hands_back_the_loaded_attention(reference, tmp_path, tiny_gpt_dir,
                                                                        austen_text):
    """FA4 is a training kernel: the loop's forward runs it, and measurement, later stages and the saved model get
    the attention the model loaded with (FA4 would refuse the fp32 model measured after training)."""
    from trainopt.data.prepare import load_texts, tokenize
    from trainopt.models import load_model, load_tokenizer
    from trainopt.recipe import load_recipe
    from trainopt.context import RunContext
    from trainopt.train.loop import train
    from trainopt.train.monitor import NullLog

    book = tmp_path / "book.txt"
    book.write_text(austen_text)
    recipe = load_recipe({"name": "lm", "task": "causal_lm", "model": {"path": str(tiny_gpt_dir), "dropout": 0.0},
                          "data": {"source": str(book), "block_size": 32},
                          "stages": [{"kind": "train", "batch_size": 4, "max_steps": 2, "eval_every": None,
                                      "checkpoint_every": 0, "attention": "fa4"}],
                          "run": {"seed": 0, "progress": False}})
    tok = load_tokenizer(recipe)
    data = tokenize(load_texts(recipe), tok, recipe)
    model = load_model(recipe, tok, data.label_names)
    loaded = model.config._attn_implementation
    ctx = RunContext(recipe=recipe, run_dir=tmp_path, device=torch.device("cpu"), tokenizer=tok, data=data,
                     log=NullLog())
    assert train(model, data, recipe.stages[0], ctx, tmp_path / "s")["steps"] == 2
    assert reference.calls >= 2 * 2  # two layers, two steps
    assert model.config._attn_implementation == loaded != fa4.KEY
