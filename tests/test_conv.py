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
