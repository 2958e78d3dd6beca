import inspect
import json
from dataclasses import MISSING, fields
from functools import partial

import pytest
import torch

from minimodels.conv import toeplitz
from minimodels.hyena import (
    FILTERS,
    HyenaConfig,
    HyenaOperator,
    h3_as_hyena,
    hyena_matrix,
    hyena_recurrence,
)
from minimodels.lm import LM, mixer_factory
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


def test_parameter_groups_follow_safari():
    op = HyenaOperator(8, max_len=16, filter_lr=2e-3, pos_emb_lr=0.0)
    assert all(p._optim["lr"] == 2e-3 for p in op.filter_fn.mlp.parameters())
    assert "z" in dict(op.filter_fn.pos_emb.named_buffers())
    op = HyenaOperator(8, max_len=16)
    assert op.filter_fn.pos_emb.z._optim == {"lr": 1e-5, "weight_decay": 0.0}


def test_constructor_defaults_match_config():
    sig = inspect.signature(HyenaOperator.__init__).parameters
    for f in fields(HyenaConfig):
        if f.default is not MISSING:
            assert sig[f.name].default == f.default, f.name
    config = HyenaConfig(dim=8, max_len=16, order=3, emb_dim=5)
    op = HyenaOperator.from_config(config)
    assert op.config == config


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


def test_bad_input_is_a_clear_error():
    op = HyenaOperator(8, max_len=16)
    with pytest.raises(ValueError, match="b n c"):
        op(torch.randn(16, 8))
    with pytest.raises(ValueError, match="dim=8"):
        op(torch.randn(1, 16, 4))


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

    out = tmp_path / "recall.json"
    argv = "recall --lengths 10 --vocabs 8 --steps 2 --dim 16 --dense --val-size 8"
    bench_hyena.main(
        [*argv.split(), "--mixers", "hyena", "h3", "attention:2", "--out", str(out)]
    )
    rows = json.loads(out.read_text())["results"]["rows"]
    assert [(r["mixer"], r["depth"], r["n"]) for r in rows] == [
        ("hyena", 1, 11),
        ("h3", 1, 11),
        ("attention", 2, 11),
    ]
    assert all(0 <= r["acc"] <= 1 for r in rows)
    with pytest.raises(ValueError, match="mixers"):
        bench_hyena.main([*argv.split(), "--mixers", "rwkv", "--out", str(out)])
