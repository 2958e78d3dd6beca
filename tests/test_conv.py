import json

import pytest
import torch

from minimodels import conv
from minimodels.testing import assert_causal, assert_same

PATHS = [conv.conv_toeplitz, conv.fft_conv, conv.fft_conv_monarch]
TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=1e-4),
}


def _inputs(u_shape, k, dtype, *, shared=False, skip=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = u_shape[-2] if len(u_shape) >= 2 else 1
    u = torch.randn(u_shape, generator=g, dtype=dtype)
    h_shape = (k,) if shared else (d, k)
    h = torch.randn(h_shape, generator=g, dtype=dtype) / k**0.5
    D = torch.randn(d, generator=g, dtype=dtype) if skip else None
    return u, h, D


@pytest.mark.parametrize("fast", PATHS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    "u_shape, k",
    [
        ((1, 1, 1), 1),  # a single position
        ((2, 3, 8), 8),  # even, power of two
        ((3, 2, 7), 7),  # odd
        ((1, 4, 12), 12),  # even, not a power of two
        ((2, 5, 33), 9),  # odd, filter shorter than the signal
        ((2, 2, 3, 10), 10),  # two batch axes
        ((4, 17), 17),  # no batch axis
    ],
)
def test_paths_equal_direct(fast, dtype, u_shape, k):
    u, h, D = _inputs(u_shape, k, dtype)
    assert_same(fast, conv.conv_direct, [u, h, D], **TOL[dtype])  # grads of u, h, D
    assert_same(lambda u, h: fast(u, h), conv.conv_direct, [u, h], **TOL[dtype])


@pytest.mark.parametrize("fast", PATHS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("n", [6, 11])
def test_paths_with_a_shared_filter(fast, n):
    u, h, _ = _inputs((2, 3, n), n, torch.float64, shared=True, skip=False)
    assert_same(fast, conv.conv_direct, [u, h], **TOL[torch.float64])


def test_direct_is_the_sum():
    u, h, D = _inputs((1, 2, 6), 6, torch.float64)
    y = conv.conv_direct(u, h, D)
    for c in range(2):
        for t in range(6):
            s = sum(h[c, t - j] * u[0, c, j] for j in range(t + 1)) + D[c] * u[0, c, t]
            assert y[0, c, t].item() == pytest.approx(s.item())


@pytest.mark.parametrize("fn", [conv.conv_direct, *PATHS], ids=lambda f: f.__name__)
def test_causal(fn):
    u, h, D = _inputs((2, 3, 16), 16, torch.float64)
    assert_causal(lambda x: fn(x, h, D), u, [0, 5, 15], dim=-1, atol=1e-12)


def test_toeplitz_structure():
    h = torch.arange(1.0, 5.0)
    T = conv.toeplitz(h, 6)
    assert T.shape == (6, 6)
    assert torch.equal(T, T.tril())
    for t in range(6):
        for s in range(6):
            assert T[t, s] == (h[t - s] if 0 <= t - s < 4 else 0)
    assert conv.toeplitz(torch.ones(3, 2), 4).shape == (3, 4, 4)


def test_toeplitz_is_a_block_of_the_padded_circulant():
    h = torch.randn(7, dtype=torch.float64)
    C = conv.circulant(torch.nn.functional.pad(h, (0, 7)))
    assert torch.equal(C[:7, :7], conv.toeplitz(h, 7))
    F = conv.dft_matrix(14, dtype=torch.complex128)
    Fi = conv.dft_matrix(14, inverse=True, dtype=torch.complex128)
    eig = torch.fft.fft(torch.nn.functional.pad(h, (0, 7)))
    torch.testing.assert_close(Fi @ torch.diag(eig) @ F, C.to(torch.complex128))


@pytest.mark.parametrize("m", [1, 2, 6, 7, 16, 30, 48, 1024])
@pytest.mark.parametrize("order", ["two", "radix4"])
def test_fft_monarch_equals_torch_fft(m, order):
    factors = None if order == "two" else conv.monarch_factors(m, max_factor=4)
    x = torch.randn(3, 2, m, dtype=torch.complex64)
    X, R = conv.fft_monarch(x, factors), torch.fft.fft(x)
    assert X.dtype == torch.complex64
    assert ((X - R).abs().max() / R.abs().max()).item() < 1e-4
    real = torch.randn(5, m, dtype=torch.float64)
    torch.testing.assert_close(conv.fft_monarch(real, factors), torch.fft.fft(real))


def test_dft_matrix_and_twiddles():
    x = torch.randn(10, dtype=torch.complex128)
    F = conv.dft_matrix(10, dtype=torch.complex128)
    torch.testing.assert_close(F @ x, torch.fft.fft(x))
    Fi = conv.dft_matrix(10, inverse=True, dtype=torch.complex128)
    torch.testing.assert_close(Fi @ F, torch.eye(10, dtype=torch.complex128))
    W = conv.twiddle_factors(2, 5, dtype=torch.complex128)
    torch.testing.assert_close(
        W[1, 3],
        torch.exp(torch.tensor(-2j * torch.pi * 3 / 10, dtype=torch.complex128)),
    )


def test_monarch_factors():
    assert conv.monarch_factors(64) == (8, 8)
    assert conv.monarch_factors(24) == (4, 6)
    assert conv.monarch_factors(13) == (13,)
    assert conv.monarch_factors(2**17, max_factor=16) == (16, 16, 16, 16, 2)
    assert conv.monarch_factors(2 * 3 * 17, max_factor=4) == (3, 2, 17)


def test_fft_conv_monarch_with_many_factors():
    u, h, D = _inputs((2, 3, 40), 40, torch.float64)
    fast = lambda u, h, D: conv.fft_conv_monarch(u, h, D, factors=(2, 5, 2, 4))  # noqa: E731
    assert_same(fast, conv.conv_direct, [u, h, D], **TOL[torch.float64])


def test_low_precision_input_keeps_its_dtype():
    u, h, _ = _inputs((2, 3, 16), 16, torch.float32, skip=False)
    for fn in (conv.fft_conv, conv.fft_conv_monarch):
        y = fn(u.bfloat16(), h)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(
            y.float(), conv.conv_direct(u, h), rtol=0.05, atol=0.05
        )


@pytest.mark.parametrize("fn", [conv.conv_direct, *PATHS], ids=lambda f: f.__name__)
def test_bad_inputs_name_the_argument(fn):
    u = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="longer than u"):
        fn(u, torch.randn(3, 9))
    with pytest.raises(ValueError, match="h of shape"):
        fn(u, torch.randn(4, 8))
    with pytest.raises(ValueError, match="D of shape"):
        fn(u, torch.randn(3, 8), torch.randn(5))


@pytest.mark.parametrize("fn", [conv.conv_direct, *PATHS], ids=lambda f: f.__name__)
def test_integer_inputs_are_refused_by_name(fn):
    u, h, D = torch.randn(2, 3, 8), torch.randn(3, 8), torch.randn(3)
    ints = torch.ones(2, 3, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="u must be a floating-point tensor"):
        fn(ints, h)
    with pytest.raises(ValueError, match="h must be a floating-point tensor"):
        fn(u, ints[0])
    with pytest.raises(ValueError, match="D must be a floating-point tensor"):
        fn(u, h, torch.ones(3, dtype=torch.int32))
    fn(u, h, D)  # the same shapes in floating point are fine


@pytest.mark.parametrize("fn", [conv.conv_direct, *PATHS], ids=lambda f: f.__name__)
def test_empty_sequences_are_refused_by_name(fn):
    with pytest.raises(ValueError, match="u must hold at least one position"):
        fn(torch.randn(2, 3, 0), torch.randn(3, 0))
    with pytest.raises(ValueError, match="h must hold at least one tap"):
        fn(torch.randn(2, 3, 4), torch.randn(3, 0))


def test_bad_monarch_arguments():
    with pytest.raises(ValueError, match="factors"):
        conv.fft_monarch(torch.randn(12), (5, 2))
    with pytest.raises(ValueError, match="max_factor"):
        conv.monarch_factors(12, max_factor=1)
    with pytest.raises(ValueError, match="n must be positive"):
        conv.toeplitz(torch.randn(3), 0)
    with pytest.raises(ValueError, match="m must be positive"):
        conv.dft_matrix(0)


@pytest.mark.parametrize("k, n", [(3, 10), (1, 5), (4, 4)])
def test_short_conv_is_a_causal_conv(k, n):
    torch.manual_seed(0)
    sc = conv.ShortConv(5, kernel_size=k).double()
    x = torch.randn(2, 5, n, dtype=torch.float64)
    ref = conv.conv_direct(x, sc.filter()) + sc.conv.bias[:, None]
    torch.testing.assert_close(sc(x), ref)
    assert_causal(sc, x, [0, n // 2, n - 1], dim=-1, atol=1e-12)


def test_short_conv_step_equals_forward():
    torch.manual_seed(0)
    sc = conv.ShortConv(4).double()
    x = torch.randn(3, 4, 9, dtype=torch.float64)
    state, ys = sc.init_state(3), []
    assert state.shape == (3, 4, 2)
    for t in range(9):
        y_t, state = sc.step(x[..., t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, -1), sc(x))
    with pytest.raises(ValueError, match="x_t"):
        sc.step(x, state)


def test_short_conv_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size"):
        conv.ShortConv(4, kernel_size=0)
    with pytest.raises(ValueError, match="dim"):
        conv.ShortConv(0)


def test_benchmark_paths_runs_at_toy_size(tmp_path):
    from benchmarks import conv as bench_conv

    out = tmp_path / "paths.json"
    rows = bench_conv.main(["--min-log2", "4", "--max-log2", "5", "--repeats", "1",
                            "--out", str(out)])  # fmt: skip
    data = json.loads(out.read_text())
    assert data["results"]["mode"] == "paths"
    got = data["results"]["rows"]
    assert [r["n"] for r in got] == [16, 32] and rows == got
    assert {"direct", "toeplitz", "fft", "monarch"} <= set(got[0]["seconds"])
    assert got[0]["fft_vs_direct"] > 0


def test_benchmark_attention_runs_at_toy_size(tmp_path):
    from benchmarks import conv as bench_conv

    out = tmp_path / "attn.json"
    bench_conv.main(["--mode", "attention", "--min-log2", "4", "--max-log2", "5",
                     "--dim", "16", "--heads", "2", "--repeats", "1",
                     "--out", str(out)])  # fmt: skip
    data = json.loads(out.read_text())
    got = data["results"]["rows"]
    assert data["results"]["mode"] == "attention" and len(got) == 2
    assert {"fft_conv", "attention"} <= set(got[0]["seconds"])
    assert got[1]["attention_vs_fft_conv"] > 0


# --- MonarchConv: learned factors, initialised to the DFT -------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    "u_shape, k, factors",
    [
        ((2, 3, 8), 8, None),  # m = 16 = 4 x 4
        ((3, 2, 7), 7, None),  # m = 14 = 2 x 7
        ((2, 5, 33), 9, (6, 11)),  # odd n, filter shorter, explicit split
        ((4, 1), 1, None),  # n = 1: m = 2 is one dense block
    ],
)
def test_monarch_conv_at_init_is_fft_conv(dtype, u_shape, k, factors):
    layer = conv.MonarchConv(u_shape[-1], factors=factors).to(dtype)
    u, h, D = _inputs(u_shape, k, dtype)
    assert_same(layer, conv.fft_conv, [u, h, D], **TOL[dtype])  # outputs and grads


def test_monarch_conv_transform_at_init_is_the_dft():
    layer = conv.MonarchConv(32).double()  # m = 64 = 8 x 8
    x = torch.randn(3, 64, dtype=torch.complex128)
    torch.testing.assert_close(layer.transform(x), torch.fft.fft(x))
    torch.testing.assert_close(layer.transform(x), conv.fft_monarch(x, (8, 8)))


@pytest.mark.parametrize("n, split", [(8, (4, 4)), (64, (8, 16)), (7, (2, 7))])
def test_monarch_conv_parameter_count(n, split):
    """L: m2 blocks (m1 m1), R: m1 blocks (m2 m2), complex: 2 m (m1 + m2) reals."""
    layer = conv.MonarchConv(n)
    m1, m2 = split
    assert (layer.m1, layer.m2) == split
    assert tuple(layer.dL.shape) == (m2, m1, m1, 2)
    assert tuple(layer.dR.shape) == (m1, m2, m2, 2)
    count = sum(p.numel() for p in layer.parameters())
    assert count == 2 * (2 * n) * (m1 + m2)
    assert count < 2 * (2 * n) ** 2  # fewer than a dense complex (m m) matrix


def test_monarch_conv_stays_causal_with_learned_factors():
    torch.manual_seed(0)
    layer = conv.MonarchConv(16).double()
    with torch.no_grad():  # factors far from the DFT, as training could make them
        layer.dL.add_(torch.randn_like(layer.dL))
        layer.dR.add_(torch.randn_like(layer.dR))
    u, h, D = _inputs((2, 3, 16), 16, torch.float64)
    assert not torch.allclose(layer(u, h, D), conv.fft_conv(u, h, D))
    assert_causal(lambda x: layer(x, h, D), u, [0, 5, 15], dim=-1, atol=1e-12)
    # the filter it applies is a length-n causal filter: the layer is fft_conv of it
    torch.testing.assert_close(layer(u, h, D), conv.fft_conv(u, layer.filter(h), D))


def test_monarch_conv_factors_learn_without_weight_decay():
    from minimodels.optim import optim_settings

    layer = conv.MonarchConv(8)
    u, h, _ = _inputs((2, 3, 8), 8, torch.float32)
    layer(u, h).square().sum().backward()
    assert layer.dL.grad.abs().sum() > 0 and layer.dR.grad.abs().sum() > 0
    settings = optim_settings(layer)
    assert settings[id(layer.dL)]["weight_decay"] == 0.0
    assert settings[id(layer.dR)]["weight_decay"] == 0.0


def test_monarch_conv_bad_arguments():
    with pytest.raises(ValueError, match="n must be"):
        conv.MonarchConv(0)
    with pytest.raises(ValueError, match="multiply to 2n"):
        conv.MonarchConv(8, factors=(4, 3))
    with pytest.raises(ValueError, match="two factors"):
        conv.MonarchConv(8, factors=(2, 2, 4))
    layer = conv.MonarchConv(8)
    u, h, _ = _inputs((1, 2, 6), 6, torch.float32)
    with pytest.raises(ValueError, match="length n = 8"):
        layer(u, h)


def test_gated_long_conv_mixer_is_causal_with_learned_factors():
    from benchmarks.monarch import GatedLongConv

    torch.manual_seed(0)
    mixer = GatedLongConv(8, seq_len=12, learned=True).double()
    with torch.no_grad():
        mixer.monarch.dL.add_(torch.randn_like(mixer.monarch.dL))
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    assert_causal(mixer, x, [0, 4, 11], dim=1, atol=1e-12)
    fixed = GatedLongConv(8, seq_len=12, learned=False).double()
    fixed.load_state_dict(mixer.state_dict(), strict=False)
    fixed_out = fixed(x)
    assert not torch.allclose(fixed_out, mixer(x))  # the learned factors matter


def test_monarch_grid_runs_at_toy_size(tmp_path):
    from benchmarks import monarch
    from minimodels import experiments

    out = tmp_path / "monarch.json"
    argv = ["--steps", "1", "--seeds", "0", "--lrs", "1e-3", "--out", str(out)]
    rows = monarch.main(argv)
    assert [r["contender"] for r in rows] == ["fft", "monarch"]
    fft, learned = rows
    assert fft["transform_change"] == 0 < learned["transform_change"]
    # the learned factors are the only extra parameters: 2 m (m1 + m2) per layer
    m1, m2 = conv.monarch_factors(2 * monarch.N)
    extra = monarch.DEPTH * 2 * (2 * monarch.N) * (m1 + m2)
    assert learned["parameters"] - fft["parameters"] == extra
    assert all(r["test_bytes"] >= 1000 and 0 < r["test_bits"] < 9 for r in rows)
    made = experiments.load(out)["provenance"]
    assert made["command"].startswith("python -m benchmarks.monarch")
