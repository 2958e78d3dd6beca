import inspect
import json
import math
from functools import partial

import pytest
import torch

from minimodels.attention import MultiHeadAttention
from minimodels.conv import fft_conv, toeplitz
from minimodels.hyena import (
    FILTERS,
    ExplicitFilter,
    HyenaConfig,
    HyenaOperator,
    h3_as_hyena,
    hyena_matrix,
    hyena_recurrence,
)
from minimodels.lm import LM, mixer_factory
from minimodels.optim import optim_settings
from minimodels.testing import assert_causal, assert_same


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These shapes are tiny: a second thread only waits (badly, on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _op(dim: int = 8, max_len: int = 32, **options) -> HyenaOperator:
    torch.manual_seed(0)
    return HyenaOperator(dim, max_len=max_len, **options).double()


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("filter", FILTERS)
def test_operator_is_causal(order, filter):
    op = _op(order=order, filter=filter)
    for n in (1, 7, 32):
        u = torch.randn(2, n, 8, dtype=torch.float64)
        assert_causal(op, u, sorted({0, n // 2, n - 1}), atol=1e-10)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 5, 16, 31])
def test_fft_path_equals_toeplitz_path(order, n):
    fast = _op(dim=6, order=order)
    slow = _op(dim=6, order=order, fast=False)
    slow.load_state_dict(fast.state_dict())
    u = torch.randn(3, n, 6, dtype=torch.float64)
    assert_same(fast, slow, [u], rtol=1e-9, atol=1e-10)
    # and the gradients reach the filter network and D the same way
    (fast(u) ** 2).sum().backward()
    (slow(u) ** 2).sum().backward()
    for (name, a), b in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_recurrence_equals_matrix_form(order):
    op = _op(dim=5, order=order)
    u = torch.randn(2, 13, 5, dtype=torch.float64)
    H, v = op.matrix(u)
    assert H.shape == (2, 5, 13, 13)
    assert torch.all(H.triu(1) == 0)  # causal: H(u) is lower triangular
    y = op.out_proj((H @ v[..., None])[..., 0].transpose(1, 2))
    torch.testing.assert_close(y, op(u), rtol=1e-9, atol=1e-10)


def test_order_two_is_the_h3_product():
    """y = D_q S_psi D_k S_phi v, the H3 matrix of the Hyena paper (eq. 4)."""
    torch.manual_seed(1)
    b, d, n = 2, 3, 11
    q, k, v = (torch.randn(b, d, n, dtype=torch.float64) for _ in range(3))
    phi, psi = torch.randn(2, d, n, dtype=torch.float64)
    D = torch.zeros(2, d, dtype=torch.float64)
    y = hyena_recurrence([k, q], v, torch.stack([phi, psi]), D)
    expected = (
        q
        * (
            toeplitz(psi, n)
            @ (k * (toeplitz(phi, n) @ v[..., None])[..., 0])[..., None]
        )[..., 0]
    )
    torch.testing.assert_close(y, expected)
    H = hyena_matrix([k, q], torch.stack([phi, psi]), D)
    torch.testing.assert_close((H @ v[..., None])[..., 0], expected)


def test_h3_as_hyena_is_order_two_with_ssm_filters():
    op = h3_as_hyena(8, max_len=16, d_state=4)
    assert op.order == 2 and op.config.filter == "s4d"
    assert op.filters(16).shape == (2, 8, 16)
    assert op(torch.randn(1, 16, 8)).shape == (1, 16, 8)


@pytest.mark.parametrize("filter", FILTERS)
def test_filters_for_any_length_up_to_max_len(filter):
    op = _op(max_len=20, order=2, filter=filter)
    full = op.filters(20)
    assert full.shape == (2, 8, 20)
    for n in (1, 2, 9, 20):
        torch.testing.assert_close(op.filters(n), full[..., :n])
    with pytest.raises(ValueError, match="max_len=20"):
        op.filters(21)
    with pytest.raises(ValueError, match="max_len=20"):
        op(torch.randn(1, 21, 8, dtype=torch.float64))


def test_implicit_filter_has_the_window_and_few_parameters():
    op = HyenaOperator(16, max_len=4096, filter_order=8)
    h = op.filters(4096).detach()
    # the window decays to target=1e-2 by t=1.5 at the slowest channel, so every
    # filter's tail is much smaller than its head
    head, tail = h[..., :64].abs().amax(-1), h[..., -64:].abs().amax(-1)
    assert torch.all(tail < head)
    # the filter's parameter count does not grow with max_len (bar the encoding)
    mlp = sum(p.numel() for p in op.filter_fn.mlp.parameters())
    assert mlp == 3 * 8 + 8 + 2 * (8 * 8 + 8) + 8 + 8 * 32  # + shared Sin freq


def _window_rates(op: HyenaOperator) -> torch.Tensor:
    """Each filter channel's decay rate (o d), read off the filters themselves: with
    the MLP replaced by ones, h_t = exp(-|delta| t), so |delta| = -log(h_1) / t_1."""
    channels = op.order * op.dim

    class Ones(torch.nn.Module):
        def forward(self, z):
            return torch.ones(z.shape[0], channels)

    op.filter_fn.mlp = Ones()
    h = op.filters(2).detach()
    t1 = op.filter_fn.pos_emb.t[1, 0]
    return -torch.log(h[..., 1] / h[..., 0]) / t1


@pytest.mark.parametrize("order", [2, 3])
def test_every_filter_spans_the_full_window_range(order):
    """safari interleaves the window rates over the filters (``(v o) -> o v``):
    each h^i has channels from the slowest rate to the fastest."""
    rates = _window_rates(HyenaOperator(16, max_len=64, order=order))
    slow, fast = math.log(100) / 1.5, math.log(100) / 0.3  # 3.07 and 15.35
    torch.testing.assert_close(rates.min(), torch.tensor(slow), rtol=1e-4, atol=0)
    torch.testing.assert_close(rates.max(), torch.tensor(fast), rtol=1e-4, atol=0)
    step = (fast - slow) / (16 * order - 1)
    for i in range(order):  # within one step of the extremes, every filter
        assert rates[i].min() <= slow + order * step
        assert rates[i].max() >= fast - order * step
    # and the channels of one filter are in slow-to-fast order
    assert torch.all(rates[:, 1:] > rates[:, :-1])


def test_positional_encoding_bands_follow_safari():
    """safari's f = linspace(1e-4, B - 1, B): emb_dim 3 has only f = 1e-4, whose
    cos and sin are constant; emb_dim 5 adds f = 1, one period over max_len."""
    from minimodels.hyena import PositionalEmbedding

    z3, t = PositionalEmbedding(3, 1024, lr=0.0)(1024)
    assert torch.equal(z3[:, 0:1], t)
    assert z3[:, 1].min() > 1 - 1e-6 and z3[:, 2].abs().max() < 1e-3
    z5, _ = PositionalEmbedding(5, 1024, lr=0.0)(1024)
    assert z5[:, 2].min() < -0.99 and z5[:, 2].max() > 0.99  # cos of f = 1
    assert z5[:, 4].min() < -0.99 and z5[:, 4].max() > 0.99  # -sin of f = 1
    torch.testing.assert_close(z5[:, [0, 1, 3]], z3)


def _safari_forward(x, v, k, bias):
    """safari's HyenaOperator loop (src/models/sequence/hyena.py), N gates x[0..N-1]
    and N - 1 long filters k: gate, then convolve; the last gate is x[0]."""
    for o, x_i in enumerate(reversed(x[1:])):
        v = fft_conv(v * x_i, k[o], bias[o])
    return v * x[0]


@pytest.mark.parametrize("order", [2, 3])
def test_safari_order_n_is_ours_with_an_identity_first_filter(order):
    """safari's order N is (1) with the gates reversed, h^1 = 0 and D^1 = 1."""
    torch.manual_seed(order)
    b, d, n = 2, 3, 12
    x = [torch.randn(b, d, n, dtype=torch.float64) for _ in range(order)]
    v = torch.randn(b, d, n, dtype=torch.float64)
    k = torch.randn(order - 1, d, n, dtype=torch.float64)
    bias = torch.randn(order - 1, d, dtype=torch.float64)
    h = torch.cat([torch.zeros(1, d, n, dtype=torch.float64), k])
    D = torch.cat([torch.ones(1, d, dtype=torch.float64), bias])
    ours = hyena_recurrence(x[::-1], v, h, D)
    torch.testing.assert_close(ours, _safari_forward(x, v, k, bias))


def test_parameter_groups_follow_safari():
    op = HyenaOperator(8, max_len=16, filter_lr=2e-3, pos_emb_lr=0.0)
    settings = optim_settings(op)
    for p in op.filter_fn.mlp.parameters():
        assert settings[id(p)] == {"lr": 2e-3, "weight_decay": 0.0}
    assert "z" in dict(op.filter_fn.pos_emb.named_buffers())
    op = HyenaOperator(8, max_len=16)
    z = op.filter_fn.pos_emb.z
    assert optim_settings(op)[id(z)] == {"lr": 1e-5, "weight_decay": 0.0}


def test_the_operator_is_built_from_its_config_alone():
    # every default is HyenaConfig's: the constructor lists none of its own
    sig = inspect.signature(HyenaOperator.__init__).parameters
    assert list(sig) == ["self", "dim", "options"]
    assert HyenaOperator(8, max_len=16).config == HyenaConfig(dim=8, max_len=16)
    config = HyenaConfig(dim=8, max_len=16, order=3, emb_dim=5, filter="explicit")
    op = HyenaOperator.from_config(config)
    assert op.config == config and op.order == 3 and op.D.shape == (3, 8)
    assert isinstance(op.filter_fn, ExplicitFilter)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_len": 16, "ordr": 3}, "'ordr' \\(did you mean 'order'\\?\\)"),
        ({"max_len": 16, "filter_lrr": 1e-3}, "did you mean 'filter_lr'"),
        ({"max_len": 16, "wobble": 1}, "unknown option 'wobble'; its options"),
        ({}, "max_len"),
    ],
)
def test_a_misspelt_or_missing_option_is_an_error_naming_it(options, message):
    with pytest.raises(TypeError, match=message):
        HyenaOperator(8, **options)


@pytest.mark.parametrize(
    "options, name",
    [
        ({"order": 0}, "order"),
        ({"emb_dim": 4}, "emb_dim"),
        ({"emb_dim": 1}, "emb_dim"),
        ({"filter": "fourier"}, "filter"),
        ({"max_len": 0}, "max_len"),
        ({"filter_order": 0}, "filter_order"),
        ({"short_kernel": 0}, "short_kernel"),
        ({"fast_decay_pct": 2.0}, "fast_decay_pct"),
        ({"target": 1.0}, "target"),
        ({"pos_emb_lr": -1.0}, "pos_emb_lr"),
    ],
)
def test_bad_config_is_a_clear_error(options, name):
    options = {"max_len": 16, **options}
    with pytest.raises(ValueError, match=name):
        HyenaOperator(8, **options)
    with pytest.raises(ValueError, match=name):
        HyenaConfig(dim=8, **options)


@pytest.mark.parametrize("method", ["forward", "matrix"])
def test_bad_input_is_a_clear_error(method):
    op = getattr(HyenaOperator(8, max_len=16), method)
    with pytest.raises(ValueError, match="b n c"):
        op(torch.randn(16, 8))
    with pytest.raises(ValueError, match="dim=8"):
        op(torch.randn(1, 16, 4))
    with pytest.raises(ValueError, match="u must be a floating-point.*int64"):
        op(torch.randint(0, 5, (1, 16, 8)))
    with pytest.raises(ValueError, match="length 0"):
        op(torch.randn(2, 0, 8))


def test_matrix_is_built_on_the_input_device():
    """``torch.eye`` without a device put H(u) on the CPU whatever the input's
    device; the meta device shows it without a GPU."""
    op = HyenaOperator(4, max_len=8).to("meta")
    H, v = op.matrix(torch.randn(2, 8, 4, device="meta"))
    assert H.device.type == v.device.type == "meta" and H.shape == (2, 4, 8, 8)
    x = [torch.randn(1, 4, 8, device="meta")] * 2
    h, D = torch.randn(2, 4, 8, device="meta"), torch.randn(2, 4, device="meta")
    assert hyena_matrix(x, h, D).device.type == "meta"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_matrix_on_cuda_equals_forward():
    op = _op(dim=4, max_len=16).cuda()
    u = torch.randn(2, 16, 4, dtype=torch.float64, device="cuda")
    H, v = op.matrix(u)
    y = op.out_proj(torch.einsum("bdts,bds->btd", H, v))
    torch.testing.assert_close(y, op(u), rtol=1e-9, atol=1e-10)


def test_works_in_the_language_model():
    torch.manual_seed(0)
    model = LM(12, 16, 2, mixer_factory("hyena", max_len=24, order=3))
    ids = torch.randint(0, 12, (2, 24))
    assert model(ids).shape == (2, 24, 12)
    assert_causal(model, ids, positions=[0, 11, 23])
    model.loss(ids, ids).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model = LM(12, 16, 1, partial(HyenaOperator, max_len=8))
    assert model.generate(ids[:, :3], 4, temperature=0).shape == (2, 7)


def _linear_flops(module, positions):
    return sum(
        2 * positions * m.in_features * m.out_features
        for m in module.modules()
        if isinstance(m, torch.nn.Linear)
    )


def test_forward_flops_are_exact_counts():
    from benchmarks.hyena import fft_flops, forward_flops

    n, d = 256, 16
    attention = MultiHeadAttention(d, heads=2, rotary=False)
    expected = _linear_flops(attention, n) + 2 * (2 * n * n * d)  # q k^T and P v
    assert forward_flops(attention, n, d) == expected
    assert forward_flops(attention, 2 * n, d) > 3.5 * expected  # ~ n^2

    hyena = HyenaOperator(d, max_len=n, order=2, filter_order=8)
    projections = _linear_flops(hyena.in_proj, n) + _linear_flops(hyena.out_proj, n)
    mlp = _linear_flops(hyena.filter_fn.mlp, n)  # on n positions, linear in n
    short = 2 * 3 * d * 3 * n  # depthwise, 3 taps, 3 d channels
    # per order: rfft of z (d rows), rfft of h (d rows), irfft (d rows), length 2n
    ffts = 2 * 3 * fft_flops(2 * n, d, real=True)
    assert forward_flops(hyena, n, d) == projections + mlp + short + ffts
    assert fft_flops(8, 1, real=False) == 5 * 8 * 3


def test_benchmark_runs_at_toy_size(tmp_path):
    from benchmarks import hyena as bench_hyena

    out = tmp_path / "speed.json"
    argv = "--lengths 64 128 --dim 16 --repeats 1"
    bench_hyena.main([*argv.split(), "--out", str(out)])
    data = json.loads(out.read_text())
    rows = data["results"]["rows"]
    assert [r["n"] for r in rows] == [64, 128]
    assert all(r["hyena_s"] > 0 and r["attention_s"] > 0 for r in rows)
    assert "crossover" in data["results"] and "environment" in data


def test_recall_grid_runs_at_toy_size(tmp_path):
    from benchmarks import hyena as bench_hyena
    from minimodels import experiments

    out = tmp_path / "recall.json"
    rows = bench_hyena.main(["recall", "--toy", "--out", str(out)])
    stored = experiments.load(out)
    assert stored["rows"] == rows and stored["provenance"]["threads"] == 1
    tasks = {(r["vocab"], r["n"], r["contender"]) for r in rows}
    assert tasks == {
        (10, 33, "hyena"), (10, 33, "h3"), (10, 33, "attention"),
        (10, 33, "attention-2"),
    }  # fmt: skip
    assert all(0 <= r["val_acc"] <= 1 and 0 <= r["test_acc"] <= 1 for r in rows)
    table = bench_hyena.recall_table(rows)
    assert len(table) == 4 and all(t["seeds"] == [0, 1] for t in table)
    # a stored cell re-runs to the same numbers on the same machine
    stored_row, live = experiments.spot_check(
        bench_hyena.recall_cell, rows, bench_hyena.CELL_NAMES
    )
    assert live["test_acc"] == stored_row["test_acc"]
    with pytest.raises(ValueError, match="contender"):
        bench_hyena.recall_cell({**rows[0], "contender": "rwkv"})


def test_filter_grid_compares_equal_filter_parameters():
    from benchmarks import hyena as bench_hyena

    cells = bench_hyena.recall_cells(contenders=bench_hyena.FILTER_CONTENDERS)
    assert {c["contender"] for c in cells} == {"hyena-small", "hyena-explicit"}
    assert len(cells) == 2 * len(bench_hyena.RECALL_LRS) * 3
    counts = {}
    for name in bench_hyena.FILTER_CONTENDERS:
        op = bench_hyena.recall_mixer(name, 33, 1e-3)(bench_hyena.RECALL_DIM)
        counts[name] = sum(
            p.numel() for p in op.filter_fn.parameters() if p.requires_grad
        )
    assert counts["hyena-explicit"] == 2 * 64 * 33
    assert abs(counts["hyena-small"] - counts["hyena-explicit"]) < 0.01 * 4224
    toy = {**cells[0], "steps": 2, "questions": 20, "dim": 16}
    for name in bench_hyena.FILTER_CONTENDERS:
        metrics = bench_hyena.recall_cell({**toy, "contender": name})
        assert 0 <= metrics["test_acc"] <= 1
