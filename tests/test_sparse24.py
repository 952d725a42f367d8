"""The direct cuSPARSELt 2:4 Linear: what can be checked without a GPU (the kernel itself runs on CUDA only; its
speed and numerics on an H200 are in benchmarks/RESULTS.md, `benchmarks/cslt_direct_gpu.py`)."""

import pytest
import torch

from trainopt.compress.prune import sparse24


def _two_four(linear: torch.nn.Linear) -> None:
    with torch.no_grad():
        g = linear.weight.view(linear.out_features, -1, 4)
        idx = g.abs().topk(2, dim=-1).indices
        g.mul_(torch.zeros_like(g).scatter_(-1, idx, 1.0))


def test_two_four_linears_finds_exactly_the_layers_with_the_pattern():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4),
                                torch.nn.Linear(4, 6), torch.nn.Linear(6, 2))
    _two_four(model[0])
    _two_four(model[3])
    with torch.no_grad():
        model[2].weight[:, 3::4] = 0  # one zero in four: not 2:4
    assert sparse24.two_four_linears(model) == {"0", "3"}  # "4": 6 inputs, not a multiple of 4


def test_on_a_cpu_nothing_is_converted_and_the_model_is_unchanged():
    assert not sparse24.available(torch.device("cpu"))
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    _two_four(model[0])
    with pytest.raises(ValueError, match="CUDA"):
        sparse24.Sparse24Linear(model[0])
    x = torch.randn(3, 8)
    before = model(x)
    result = sparse24.convert(model)
    assert result["converted"] == 0 and "CUDA" in result["errors"][0]
    assert isinstance(model[0], torch.nn.Linear) and torch.equal(model(x), before)


def test_the_kernel_timing_says_why_it_did_not_run():
    from types import SimpleNamespace

    from trainopt.compress.prune.kernels import time_sparse_kernels
    from trainopt.recipe import MeasureSpec

    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    for device, extras, reason in ((torch.device("cpu"), {"measure_inputs": {1: {}}}, "CUDA only"),
                                   (torch.device("cuda"), {}, "measure.latency: false")):
        ctx = SimpleNamespace(device=device, measure_inputs=extras.get("measure_inputs"), recipe=SimpleNamespace(measure=MeasureSpec()))
        out = time_sparse_kernels(model, [("0", model[0])], ctx)
        assert out["measured"] is False and reason in out["reason"]


def test_the_direct_call_computes_the_linear_for_any_leading_shape_and_row_count(monkeypatch):
    """The module's own logic — flatten, pad rows to cuSPARSELt's multiple, (W · xᵀ)ᵀ with the transpose fused, bias,
    unpad, reshape — checked on a CPU against nn.Linear, with the two cuSPARSELt operators replaced by their dense
    definitions (compress: the weight itself; sparse_mm(A, B, bias, transpose_result): A·B + bias, transposed)."""
    calls = []

    def sparse_mm(a, b, bias=None, transpose_result=False, alg_id=0):
        calls.append((tuple(b.shape), transpose_result, alg_id))
        assert b.shape[1] % sparse24.ROW_MULTIPLE == 0  # rows were padded before the call
        out = a @ b + (bias[:, None] if bias is not None else 0)
        return out.t() if transpose_result else out

    monkeypatch.setattr(sparse24, "_require_cuda", lambda w: None)
    monkeypatch.setattr(torch, "_cslt_compress", lambda w: w.clone(), raising=False)
    monkeypatch.setattr(torch, "_cslt_sparse_mm", sparse_mm, raising=False)
    torch.manual_seed(0)
    for bias in (True, False):
        lin = torch.nn.Linear(32, 24, bias=bias)
        _two_four(lin)
        layer = sparse24.Sparse24Linear(lin, alg_id=7)
        for shape in ((3, 5, 32), (16, 32), (1, 1, 32)):  # 15 rows (padded to 16), 16 rows, 1 row
            x = torch.randn(*shape)
            torch.testing.assert_close(layer(x), lin(x))
    assert {c[1:] for c in calls} == {(True, 7)} and {c[0][1] for c in calls} == {16}
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 8))
    _two_four(model[0])
    x = torch.randn(4, 32)
    ref = model(x)
    assert sparse24.convert(model) == {"converted": 1, "errors": [], "non_default_algs": None}
    assert isinstance(model[0], sparse24.Sparse24Linear) and isinstance(model[1], torch.nn.Linear)
    torch.testing.assert_close(model(x), ref)
