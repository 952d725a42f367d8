"""attention: sdpa_causal — the same numbers as transformers' SDPA path in training, decoding and padded batches,
with no mask tensor in the compiled graph of an unpadded causal batch."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from trainopt.train import attention


def _pair():
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=97, resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa", bos_token_id=0, eos_token_id=0)
        models.append(GPT2LMHeadModel(cfg).eval())
    models[1].set_attn_implementation(attention.register_sdpa_causal())
    return models


def test_training_loss_and_gradients_match_transformers_sdpa():
    sdpa, causal = _pair()
    ids = torch.randint(0, 97, (3, 24))
    a, b = sdpa(input_ids=ids, labels=ids).loss, causal(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(b, a)
    a.backward()
    b.backward()
    for (name, p), q in zip(causal.named_parameters(), sdpa.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_decoding_with_a_cache_and_padded_batches_match_too():
    sdpa, causal = _pair()
    prompt = torch.randint(1, 97, (2, 7))
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(causal.generate(prompt, **kw), sdpa.generate(prompt, **kw))
    ids = torch.randint(1, 97, (2, 10))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding on the first row
    a = sdpa(input_ids=ids, attention_mask=mask).logits
    b = causal(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(b[mask.bool()], a[mask.bool()], rtol=1e-5, atol=1e-5)


def test_compiled_an_unpadded_batch_runs_sdpa_with_is_causal_and_no_mask():
    import torch._dynamo as dynamo

    _, causal = _pair()
    dynamo.reset()
    explained = dynamo.explain(lambda i: causal(input_ids=i).logits)(torch.randint(0, 97, (2, 16)))
    calls = [n for g in explained.graphs for n in g.graph.nodes if "scaled_dot_product" in str(n.target)]
    assert len(calls) == 2
    assert all(n.kwargs.get("attn_mask") is None and n.kwargs.get("is_causal") is True for n in calls)


@pytest.mark.parametrize("q_len,kv_len", [(4, 4), (2, 5), (1, 6)])
def test_the_explicit_mask_is_causal_from_the_bottom_right(q_len, kv_len):
    m = attention.explicit_mask(q_len, kv_len, None, True, "cpu")[0, 0]
    assert m.shape == (q_len, kv_len) and bool(m[-1].all())  # the last query sees every key
    assert [int(r.sum()) for r in m] == list(range(kv_len - q_len + 1, kv_len + 1))


def test_a_sliding_window_or_soft_capping_is_refused_not_silently_dropped():
    q = torch.randn(1, 2, 4, 8)
    for kw in ({"sliding_window": 2}, {"softcap": 30.0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            attention.sdpa_causal_forward(torch.nn.Module(), q, q, q, None, **kw)
    out, _ = attention.sdpa_causal_forward(torch.nn.Module(), q, q, q, None, sliding_window=None)
    assert out.shape == (1, 4, 2, 8)


def test_the_recipe_check_refuses_sdpa_causal_outside_causal_lm():
    import trainopt
    from trainopt.errors import RecipeError
    from trainopt.validate import check_compat

    recipe = trainopt.load_recipe("quickstart", ["stages.finetune.attention=sdpa_causal"])
    with pytest.raises(RecipeError) as e:
        check_compat(recipe, torch.device("cpu"))
    assert e.value.key == "stages.0.attention" and "causal_lm" in e.value.problem
    check_compat(trainopt.load_recipe("lm-scratch", ["stages.pretrain.attention=sdpa_causal"]), torch.device("cpu"))


def test_switch_points_the_model_at_the_choice_or_refuses_it_with_the_key():
    from trainopt import load_recipe
    from trainopt.errors import RecipeError

    def stage(choice):  # a parsed recipe's stage: its errors name `stages.<index>.<key>`, as every recipe error does
        recipe = load_recipe("lm-scratch", [f"stages.pretrain.attention={choice}"])
        return recipe.stages[recipe.stage_index("pretrain")]

    _, model = _pair()
    attention.switch(model, stage("eager"))
    assert model.config._attn_implementation == "eager"
    attention.switch(model, stage("sdpa_causal"))
    assert model.config._attn_implementation == attention.SDPA_KEY
    with pytest.raises(RecipeError) as e:  # flash-attn 2 is not installed here
        attention.switch(model, stage("flash_attention_2"))
    assert e.value.key == "stages.1.attention"
    model.config.attn_pdrop = 0.1
    with pytest.raises(RecipeError, match="dropout"):
        attention.switch(model, stage("fa4"))
