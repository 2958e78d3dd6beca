"""The fused FFT convolution kernel (minimodels.kernels.fftconv; its DFT steps,
minimodels.kernels.dft) against ``minimodels.conv.fft_conv``. On CPU the kernels
run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
they are defined), in fp32."""

from functools import partial

import pytest
import torch

pytest.importorskip("triton")

from benchmarks import fftconv as bench_fftconv  # noqa: E402
from minimodels import bench, conv  # noqa: E402
from minimodels.kernels import dft, fftconv  # noqa: E402
from minimodels.kernels.io import interpreter_io  # noqa: E402
from minimodels.kernels.tiles import interpreted  # noqa: E402
from minimodels.testing import assert_causal, assert_same  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _inputs(shape, k, *, skip=True, shared=False, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(shape, generator=g)
    d = shape[-2] if len(shape) > 1 else 1
    h = torch.randn((k,) if shared else (d, k), generator=g) / k**0.5
    D = torch.randn(d, generator=g) if skip else None
    return [t.to(DEVICE) for t in (u.to(dtype), h) + ((D,) if skip else ())]


def _check(inputs, rtol=1e-4):
    """Outputs and gradients within rtol of the output's (and each gradient's)
    scale: float32 FFTs of different shapes round differently."""
    scale = conv.fft_conv(*inputs).abs().max().item()
    assert_same(fftconv.fft_conv, conv.fft_conv, inputs, rtol=rtol, atol=rtol * scale)


# lengths: 1, odd, the largest of the smallest FFT (128 -> 256), one past it (512),
# 300 (1024); filters shorter than u; several batch x channel grids
CASES = [
    ((1, 1, 1), 1),
    ((2, 3, 7), 7),
    ((2, 3, 128), 33),
    ((1, 2, 129), 129),
    ((3, 2, 300), 97),
    ((2, 2, 2, 45), 45),
]


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("shape,k", CASES)
def test_fft_conv_equals_reference(shape, k, skip):
    _check(_inputs(shape, k, skip=skip, seed=shape[-1]))


def test_shared_filter_broadcast_and_one_dimensional_signal():
    """h (k,) shared by every channel; u (b 1 n) broadcast against h (d k); u (n,)."""
    _check(_inputs((2, 3, 40), 40, shared=True))
    g = torch.Generator().manual_seed(1)
    u, h = torch.randn(2, 1, 30, generator=g), torch.randn(4, 30, generator=g)
    _check([u.to(DEVICE), h.to(DEVICE), torch.randn(4, generator=g).to(DEVICE)])
    _check([torch.randn(50, generator=g).to(DEVICE), torch.randn(50).to(DEVICE)])


def test_causal():
    u, h, D = _inputs((1, 2, 60), 60)
    assert_causal(lambda x: fftconv.fft_conv(x, h, D), u, [0, 17, 59], dim=-1)


def test_step1_dft_is_one_matmul():
    g = torch.Generator().manual_seed(0)
    for m in (16, 32, 64, 128):
        x = torch.randn(21, m, generator=g, dtype=torch.complex64).to(DEVICE)
        torch.testing.assert_close(
            dft.dft(x), torch.fft.fft(x), rtol=1e-4, atol=1e-4 * m**0.5
        )


def test_step2_monarch_dft_every_size():
    g = torch.Generator().manual_seed(0)
    m = fftconv.MIN_FFT_SIZE
    while m <= fftconv.MAX_FFT_SIZE:
        x = torch.randn(2, m, generator=g, dtype=torch.complex64).to(DEVICE)
        ref = torch.fft.fft(x)
        err = (dft.monarch_dft(x) - ref).abs().max() / ref.abs().max()
        assert err < 1e-5, (m, err.item())
        m *= 2


def test_step3_rows_per_program_and_the_conjugate_spectrum():
    """Any number of rows per program gives the same answer; with the conjugate
    spectrum the kernel computes the correlation (the adjoint, used by the
    backward): <conv(u), v> = <u, corr(v)>."""
    u, h, D = _inputs((5, 3, 90), 90)
    rows, n = u.reshape(-1, 90), 90
    spectrum = fftconv.filter_spectrum(h, fftconv.fft_size(n)[0])
    D_rows = D.expand(5, 3).reshape(-1)
    ref = conv.fft_conv(u, h, D).reshape(-1, n)
    for per in (1, 2, 5, 7):
        y = fftconv.conv_forward(rows, spectrum, D_rows, rows_per_program=per)
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    v = torch.randn_like(rows)
    corr = fftconv.conv_forward(v, spectrum, conj=True)
    flipped = conv.fft_conv(v.flip(-1).reshape(5, 3, n), h).reshape(-1, n).flip(-1)
    torch.testing.assert_close(corr, flipped, rtol=1e-4, atol=1e-4)
    y = fftconv.conv_forward(rows, spectrum)
    torch.testing.assert_close((y * v).sum(), (rows * corr).sum(), rtol=1e-4, atol=0)


def test_largest_length_and_half_precision():
    """n = 2048 (FFT size 4096, 64 x 64) forward; fp16 and bf16 in, same dtype out."""
    u, h = _inputs((1, 1, 2048), 2048, skip=False)
    y = fftconv.fft_conv(u, h)
    ref = conv.fft_conv(u, h)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    for dtype in (torch.float16, torch.bfloat16):
        u, h, D = _inputs((2, 2, 70), 70, dtype=dtype)
        y = fftconv.fft_conv(u, h, D)
        assert y.dtype == dtype
        ref = conv.fft_conv(u.float(), h, D)
        torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)


def test_bad_input_names_the_argument():
    u, h, D = _inputs((2, 3, 20), 20)
    with pytest.raises(ValueError, match="h .* longer than u"):
        fftconv.fft_conv(u, torch.randn(3, 21, device=DEVICE))
    with pytest.raises(ValueError, match="h of shape"):
        fftconv.fft_conv(u, torch.randn(4, 20, device=DEVICE))
    with pytest.raises(ValueError, match="D of shape"):
        fftconv.fft_conv(u, h, torch.randn(5, device=DEVICE))
    with pytest.raises(ValueError, match="u must be a floating-point"):
        fftconv.fft_conv(u.long(), h)
    with pytest.raises(ValueError, match="u must be float16, bfloat16 or float32"):
        fftconv.fft_conv(u.double(), h.double())
    with pytest.raises(ValueError, match="precision must be"):
        fftconv.fft_conv(u, h, precision="fast")
    long_u = torch.randn(1, 1, fftconv.MAX_FFT_SIZE // 2 + 1, device=DEVICE)
    with pytest.raises(ValueError, match="u has length 2049"):
        fftconv.fft_conv(long_u, long_u[0])
    with pytest.raises(ValueError, match="FFT size must be a power of two"):
        dft.monarch_dft(torch.randn(2, 128, dtype=torch.complex64, device=DEVICE))
    with pytest.raises(ValueError, match="step 1 takes m"):
        dft.dft(torch.randn(2, 256, dtype=torch.complex64, device=DEVICE))


@pytest.mark.parametrize("n,chunk", [(200, 90), (2500, 2048)])
def test_state_passing_equals_s4d(n, chunk):
    """Chunks through the kernel plus the passed state equal S4D's whole-length
    convolution, outputs and gradients (u and every parameter), also beyond the
    kernel's largest length (2500 > 2048)."""
    from minimodels.ssm import S4D

    torch.manual_seed(n)
    layer = S4D(3, d_state=8).to(DEVICE)
    u = torch.randn(2, n, 3, device=DEVICE)

    def chunked(u):
        A_bar, B_bar = layer.discrete()
        C = torch.view_as_complex(layer.C[0])
        y = fftconv.ssm_conv_chunked(
            u.transpose(1, 2), A_bar, B_bar, C, layer.D, chunk=chunk
        )
        return y.transpose(1, 2)

    grads = []
    for fn in (chunked, layer):
        layer.zero_grad()
        leaf = u.clone().requires_grad_()
        y = fn(leaf)
        (y * torch.cos(torch.arange(n, device=DEVICE))[:, None]).sum().backward()
        grads.append([y, leaf.grad, *(p.grad for p in layer.parameters())])
    for ours, ref in zip(*grads):
        scale = ref.abs().max().item()
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * scale)
    with pytest.raises(ValueError, match="chunk must be at most 2048"):
        A_bar, B_bar = layer.discrete()
        fftconv.ssm_conv_chunked(u.transpose(1, 2), A_bar, B_bar, A_bar, chunk=4096)


@pytest.mark.skipif(CUDA, reason="counts loads in the interpreter")
def test_bytes_counted_equal_the_formulas():
    """The unfused torch.fft path, operator by operator, and the fused kernel, load
    by load, move exactly the bytes the benchmark's formulas say; the backward
    runs 18 matmuls per row (two forward DFTs, one inverse) and 6 per channel."""
    assert interpreted()
    for dtype in (torch.float32, torch.float16):
        for b, d, n, k in [(2, 3, 10, 10), (5, 2, 129, 40)]:
            u, h, D = _inputs((b, d, n), k, dtype=dtype)
            ops = bench_fftconv.torch_bytes(partial(conv.fft_conv, u, h, D))
            moved = sum(r + w for _, r, w in ops)
            assert moved == bench_fftconv.unfused_bytes(b, d, n, k, dtype)
            io = interpreter_io(partial(fftconv.fft_conv, u, h, D))
            formula = bench_fftconv.fused_bytes(
                b, d, n, dtype, rows_per_program=fftconv.ROWS_PER_PROGRAM, skip=True
            )
            assert {key: io[key] for key in formula} == formula
            assert io["dots"] == 12 * b * d  # 6 real matmuls each way, per row
    u, h, D = (t.requires_grad_() for t in _inputs((3, 2, 100), 100))
    y = fftconv.fft_conv(u, h, D)
    io = interpreter_io(partial(y.backward, torch.ones_like(y)))
    assert io["dots"] == 18 * 3 * 2 + 6 * 2


def test_benchmark_toy_size(tmp_path):
    out = tmp_path / "fftconv.json"
    bench_fftconv.main(["--toy", "--device", DEVICE, "--out", str(out)])
    data = bench.load_json(out)
    assert data["environment"]["command"].startswith("python -m benchmarks.fftconv")
    rows = data["results"]["rows"]
    assert [r["n"] for r in rows] == [16]
    for mode in bench_fftconv.MODES:
        for name in ("fused", "torch.fft", "attention"):
            assert rows[0]["seconds"][f"{name} {mode}"] > 0


@pytest.mark.gpu
def test_gpu_long_half_precision_and_tf32():
    for n in (1000, 2048):
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            u, h, D = _inputs((4, 64, n), n, dtype=dtype, seed=n)
            y = fftconv.fft_conv(u, h, D)
            ref = conv.fft_conv(u.float(), h, D)
            tol = 1e-4 if dtype == torch.float32 else 2e-2
            scale = ref.abs().max().item()
            torch.testing.assert_close(y.float(), ref, rtol=tol, atol=tol * scale)
    _check(_inputs((8, 32, 1500), 700))
    u, h, D = _inputs((2, 16, 512), 512)
    y = fftconv.fft_conv(u, h, D, precision="tf32")
    ref = conv.fft_conv(u, h, D)
    torch.testing.assert_close(y, ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())
