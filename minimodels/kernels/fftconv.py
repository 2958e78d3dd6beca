"""FlashConv: the causal FFT convolution as one Triton kernel, grown in steps.

H3's FlashConv ("Hungry Hungry Hippos: Towards Language Modeling with State Space
Models", Fu, Dao et al., 2022, arXiv:2212.14052, Section 4) and FlashFFTConv
("FlashFFTConv: Efficient Convolutions for Long Sequences with Tensor Cores", Fu,
Kumbong, Nguyen and Re, 2023, arXiv:2311.05908) fuse the forward FFT, the
pointwise product with the filter's spectrum and the inverse FFT in one kernel, so
the length-m (m >= 2n) intermediate never goes to memory. With m = m1 m2 the DFT is
two small dense products and a twiddle product (``minimodels.conv.fft_monarch``):

    A[j1, j2] = x[m2 j1 + j2],   X[k1, k2] = fft(x)[k1 + m1 k2],
    X = ((F_m1 @ A) * W) @ F_m2,   W[k1, j2] = omega_m^(k1 j2),
    A = conj(F_m1) @ ((X @ conj(F_m2)) * conj(W)) / m          (the inverse)

Triton has no complex dtype: every complex matrix is two real ones, and a complex
product is four real ``tl.dot``s. Steps: 1 ``dft``, a length-m DFT as one matmul;
2 ``monarch_dft``, the two-factor split with twiddles; 3 ``conv_forward``, the fused
forward DFT -> times the filter spectrum (kept in the kernel's [k1, k2] order, as
FlashFFTConv keeps it) -> inverse DFT -> first n outputs + D u, one program per
channel and block of batch rows; 4 ``fft_conv``, an autograd Function whose
backward (``conv_backward``) is the adjoint: du is the same convolution with the
conjugate spectrum (a correlation), dh the correlation of dy with u summed over
the batch in the frequency domain, dD = sum_t dy u.

The DFT matrices and twiddles are computed in registers (cos and sin), not loaded.
FFT sizes are powers of two from 256 (16 x 16: ``tl.dot`` needs blocks of 16) to
4096 (64 x 64), so n <= 2048; on a GPU the two convolution kernels are autotuned
(warps, stages) once per FFT size. Arithmetic is fp32 (IEEE dots unless
``precision="tf32"``); inputs may be fp16, bf16 or fp32 (bf16 is converted to fp32
first under the interpreter, whose bf16 is wrong). Offsets are int64.

Shapes: b batch, d channels, n length, k filter length (k <= n), m = m1 m2 FFT size;
u (... d n), h (d k) or (k,), D (d,); a "row" is one (batch, channel) signal.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

from minimodels._util import check, check_positive
from minimodels.conv import _check_conv
from minimodels.kernels.tiles import check_device, compute_dtype, dot, interpreted

__all__ = [
    "MIN_FFT_SIZE",
    "MAX_FFT_SIZE",
    "dft",
    "monarch_dft",
    "fft_size",
    "filter_spectrum",
    "conv_forward",
    "conv_backward",
    "FFTConv",
    "fft_conv",
    "ssm_conv_chunked",
    "interpreter_io",
]

MIN_FFT_SIZE = 256  # 16 x 16: the smallest blocks tl.dot takes
MAX_FFT_SIZE = 4096  # 64 x 64 complex fp32 tiles per program: n <= 2048
ROWS_PER_PROGRAM = 4  # batch rows of one channel per program (spectrum loaded once)
_TWO_PI = tl.constexpr(2 * math.pi)


# --- shared pieces: roots of unity, complex products, the tile layout --------------


@triton.jit
def _roots(rows, cols, M: tl.constexpr):
    """Real and imaginary parts of omega_M^(rows x cols), omega_M = exp(-2 pi i / M);
    the exponent is reduced mod M in integers first, so the angle stays exact."""
    e = (rows[:, None] * cols[None, :]) % M
    angle = e.to(tl.float32) * (-_TWO_PI / M)
    return tl.cos(angle), tl.sin(angle)


@triton.jit
def _cdot(ar, ai, br, bi, IEEE: tl.constexpr):
    """(ar + i ai) @ (br + i bi) as four real matrix products."""
    re = dot(ar, br, IEEE) - dot(ai, bi, IEEE)
    im = dot(ar, bi, IEEE) + dot(ai, br, IEEE)
    return re, im


@triton.jit
def _cmul(ar, ai, br, bi):
    """Elementwise complex product."""
    return ar * br - ai * bi, ar * bi + ai * br


@triton.jit
def _tile(M1: tl.constexpr, M2: tl.constexpr):
    """Offsets of the (M1, M2) tile A[j1, j2] = x[M2 j1 + j2] (row-major)."""
    return tl.arange(0, M1)[:, None] * M2 + tl.arange(0, M2)[None, :]


@triton.jit
def _factors(M1: tl.constexpr, M2: tl.constexpr):
    """F_M1, the twiddles W (M1 M2) and F_M2, real and imaginary parts."""
    i1, i2 = tl.arange(0, M1), tl.arange(0, M2)
    f1r, f1i = _roots(i1, i1, M1)
    wr, wi = _roots(i1, i2, M1 * M2)
    f2r, f2i = _roots(i2, i2, M2)
    return f1r, f1i, wr, wi, f2r, f2i


@triton.jit
def _monarch_forward(ar, ai, f1r, f1i, wr, wi, f2r, f2i,
                     REAL: tl.constexpr, IEEE: tl.constexpr):  # fmt: skip
    """X[k1, k2] = fft(x)[k1 + M1 k2] from the tile A: ((F_M1 @ A) * W) @ F_M2.
    REAL: A is real (ai unused), so the first product is two real dots."""
    if REAL:
        br, bi = dot(f1r, ar, IEEE), dot(f1i, ar, IEEE)
    else:
        br, bi = _cdot(f1r, f1i, ar, ai, IEEE)
    cr, ci = _cmul(br, bi, wr, wi)
    return _cdot(cr, ci, f2r, f2i, IEEE)


@triton.jit
def _monarch_inverse_real(xr, xi, f1r, f1i, wr, wi, f2r, f2i, M: tl.constexpr,
                          IEEE: tl.constexpr):  # fmt: skip
    """Re(ifft) of a spectrum in the [k1, k2] layout, back in the tile layout: the
    forward's three steps undone in reverse order, each one conjugated."""
    zr, zi = _cdot(xr, xi, f2r, -f2i, IEEE)
    zr, zi = _cmul(zr, zi, wr, -wi)
    return (dot(f1r, zr, IEEE) + dot(f1i, zi, IEEE)) / M  # Re(conj(F1) Z)


# --- Step 1: the DFT as one matmul ---------------------------------------------------


@triton.jit
def _dft_kernel(X, OUT, R, M: tl.constexpr, BLOCK_R: tl.constexpr,
                IEEE: tl.constexpr):  # fmt: skip
    """BLOCK_R rows of x (R, 2, M) (real, imaginary planes) times F_M (symmetric)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, M)
    offs = rows[:, None].to(tl.int64) * (2 * M) + cols[None, :]
    mask = rows[:, None] < R
    xr = tl.load(X + offs, mask=mask, other=0.0)
    xi = tl.load(X + offs + M, mask=mask, other=0.0)
    fr, fi = _roots(cols, cols, M)
    yr, yi = _cdot(xr, xi, fr, fi, IEEE)
    tl.store(OUT + offs, yr, mask=mask)
    tl.store(OUT + offs + M, yi, mask=mask)


# --- Step 2: two Monarch factors and the twiddles ------------------------------------


@triton.jit
def _monarch_kernel(X, OUT, M1: tl.constexpr, M2: tl.constexpr, IEEE: tl.constexpr):
    """One row of x (R, 2, M1 M2) per program: the tile, the split DFT, and the
    result read out transposed (entry [k1, k2] is frequency k1 + M1 k2)."""
    row = tl.program_id(0).to(tl.int64) * (2 * M1 * M2)
    j = _tile(M1, M2)
    ar, ai = tl.load(X + row + j), tl.load(X + row + M1 * M2 + j)
    f1r, f1i, wr, wi, f2r, f2i = _factors(M1, M2)
    xr, xi = _monarch_forward(ar, ai, f1r, f1i, wr, wi, f2r, f2i, False, IEEE)
    k = tl.arange(0, M1)[:, None] + M1 * tl.arange(0, M2)[None, :]
    tl.store(OUT + row + k, xr)
    tl.store(OUT + row + M1 * M2 + k, xi)


# --- Steps 3-4: the fused convolution, forward and backward -------------------------


@triton.jit
def _conv_fwd_kernel(
    U, HF, D, Y, N, C, B, ROWS,  # u, y: (B C N) rows; hf: (C 2 M); D: (B C) fp32
    M1: tl.constexpr, M2: tl.constexpr, HAS_D: tl.constexpr,
    CONJ: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Program (c, i): rows b*C + c for b in [i ROWS, (i+1) ROWS). For each, the tile
    of u (zero beyond N), its spectrum, times the filter's (conjugated if CONJ:
    a correlation), the inverse, the first N outputs plus D u."""
    c = tl.program_id(0)
    b0 = tl.program_id(1) * ROWS
    M = M1 * M2
    j = _tile(M1, M2)
    spectrum = HF + c.to(tl.int64) * (2 * M)
    hr, hi = tl.load(spectrum + j), tl.load(spectrum + M + j)
    if CONJ:
        hi = -hi
    f1r, f1i, wr, wi, f2r, f2i = _factors(M1, M2)
    for b in range(b0, tl.minimum(b0 + ROWS, B)):
        r = c.to(tl.int64) + b * C  # int64: r * N may pass 2^31
        u = tl.load(U + r * N + j, mask=j < N, other=0.0).to(tl.float32)
        xr, xi = _monarch_forward(u, u, f1r, f1i, wr, wi, f2r, f2i, True, IEEE)
        xr, xi = _cmul(xr, xi, hr, hi)
        y = _monarch_inverse_real(xr, xi, f1r, f1i, wr, wi, f2r, f2i, M, IEEE)
        if HAS_D:
            y += tl.load(D + r) * u
        tl.store(Y + r * N + j, y.to(Y.dtype.element_ty), mask=j < N)


@triton.jit
def _conv_bwd_kernel(
    DY, U, HF, D, DU, DH, DD, N, K, C, B,  # dh: (C K) fp32, dD: (B C) fp32
    M1: tl.constexpr, M2: tl.constexpr, HAS_D: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Program c: every row of channel c. du = the forward with conj(H) on dy (plus
    D dy); dh = ifft(sum_b fft(dy_b) conj(fft(u_b))), summed before the one inverse
    (the inverse is linear), first K taps; dD_b = sum_t dy_b u_b."""
    c = tl.program_id(0)
    M = M1 * M2
    j = _tile(M1, M2)
    spectrum = HF + c.to(tl.int64) * (2 * M)
    hr, hi = tl.load(spectrum + j), -tl.load(spectrum + M + j)  # conj(H)
    f1r, f1i, wr, wi, f2r, f2i = _factors(M1, M2)
    gr = tl.zeros([M1, M2], tl.float32)
    gi = tl.zeros([M1, M2], tl.float32)
    for b in range(0, B):
        r = c.to(tl.int64) + b * C  # int64: r * N may pass 2^31
        dy = tl.load(DY + r * N + j, mask=j < N, other=0.0).to(tl.float32)
        u = tl.load(U + r * N + j, mask=j < N, other=0.0).to(tl.float32)
        yr, yi = _monarch_forward(dy, dy, f1r, f1i, wr, wi, f2r, f2i, True, IEEE)
        ur, ui = _monarch_forward(u, u, f1r, f1i, wr, wi, f2r, f2i, True, IEEE)
        pr, pi = _cmul(yr, yi, hr, hi)
        du = _monarch_inverse_real(pr, pi, f1r, f1i, wr, wi, f2r, f2i, M, IEEE)
        if HAS_D:
            du += tl.load(D + r) * dy
            tl.store(DD + r, tl.sum(tl.sum(dy * u, axis=1), axis=0))
        tl.store(DU + r * N + j, du.to(DU.dtype.element_ty), mask=j < N)
        pr, pi = _cmul(yr, yi, ur, -ui)
        gr += pr
        gi += pi
    dh = _monarch_inverse_real(gr, gi, f1r, f1i, wr, wi, f2r, f2i, M, IEEE)
    tl.store(DH + c.to(tl.int64) * K + j, dh, mask=j < K)


# --- Python side: layouts, sizes, launches -------------------------------------------


def _autotune(kernel):  # noqa: ANN001, ANN202
    """On a GPU, ``kernel`` tuned over warps (2, 4, 8) x stages (1, 2), once per FFT
    size (the key: M1, M2 are already powers of two, so they are the buckets)."""
    configs = [
        triton.Config({}, num_warps=w, num_stages=s) for w in (2, 4, 8) for s in (1, 2)
    ]
    return triton.autotune(configs, key=["M1", "M2"])(kernel)


_fwd_tuned, _bwd_tuned = _autotune(_conv_fwd_kernel), _autotune(_conv_bwd_kernel)


def _choose(plain, tuned):  # noqa: ANN001, ANN202
    """The autotuned kernel on a GPU; the plain one in the interpreter (which has
    no clock to tune with)."""
    return plain if interpreted() else tuned


def _planes(x: Tensor) -> Tensor:
    """Complex (R, M) -> float32 (R, 2, M): real and imaginary planes."""
    return torch.view_as_real(x.to(torch.complex64)).transpose(-1, -2).contiguous()


def _from_planes(p: Tensor) -> Tensor:
    return torch.view_as_complex(p.transpose(-1, -2).contiguous())


def _check_rows(x: Tensor) -> None:
    check(x.ndim == 2, f"x must be (rows, m) complex, got shape {tuple(x.shape)}")
    check_device(x)


def dft(x: Tensor, *, block_rows: int = 16, precision: str = "ieee") -> Tensor:
    """Step 1: the DFT of each row of x (r, m) as one complex matmul x @ F_m.

    m a power of two in 16..128 (the m x m matrix lives in registers). Complex64.
    """
    _check_rows(x)
    m = x.shape[-1]
    check(
        m in (16, 32, 64, 128),
        f"step 1 takes m in 16, 32, 64, 128 (one tile), got {m}",
    )
    check(
        block_rows >= 16 and block_rows & (block_rows - 1) == 0,
        f"block_rows must be a power of two of at least 16, got {block_rows}",
    )
    p, ieee = _planes(x), _ieee(precision)
    out = torch.empty_like(p)
    grid = (triton.cdiv(x.shape[0], block_rows),)
    _dft_kernel[grid](p, out, x.shape[0], M=m, BLOCK_R=block_rows, IEEE=ieee)
    return _from_planes(out)


def _split(m: int) -> tuple[int, int]:
    m1 = 2 ** (int(math.log2(m)) // 2)
    return m1, m // m1


def monarch_dft(x: Tensor, *, precision: str = "ieee") -> Tensor:
    """Step 2: the DFT of each row of x (r, m) as F_m1, twiddles, F_m2 in one
    program per row; m a power of two in 256..4096, m1 = 2^floor(log2(m) / 2)."""
    _check_rows(x)
    m = x.shape[-1]
    _check_size(m)
    m1, m2 = _split(m)
    p, ieee = _planes(x), _ieee(precision)
    out = torch.empty_like(p)
    _monarch_kernel[(x.shape[0],)](p, out, M1=m1, M2=m2, IEEE=ieee)
    return _from_planes(out)


def _check_size(m: int) -> None:
    check(
        MIN_FFT_SIZE <= m <= MAX_FFT_SIZE and m & (m - 1) == 0,
        f"FFT size must be a power of two in {MIN_FFT_SIZE}..{MAX_FFT_SIZE}, got {m}",
    )


def _ieee(precision: str) -> bool:
    check(
        precision in ("ieee", "tf32"),
        f"precision must be 'ieee' or 'tf32', got {precision!r}",
    )
    return precision == "ieee"


def fft_size(n: int) -> tuple[int, int, int]:
    """(m, m1, m2): the FFT size for length n, m >= 2n, and its two factors."""
    check_positive(n=n)
    m = max(MIN_FFT_SIZE, triton.next_power_of_2(2 * n))
    check(
        m <= MAX_FFT_SIZE,
        f"u has length {n}: the fused kernel takes n <= {MAX_FFT_SIZE // 2} "
        f"(FFT size <= {MAX_FFT_SIZE}); use minimodels.conv.fft_conv beyond",
    )
    return (m, *_split(m))


def filter_spectrum(h: Tensor, m: int) -> Tensor:
    """fft(h, m) for h (c k), in the kernel's [k1, k2] order: float32 (c 2 m).

    Computed once per call with torch.fft, as FlashFFTConv does; entry
    [k1, k2] is frequency k1 + m1 k2, so the kernel reads it in its own layout.
    """
    check(h.ndim == 2, f"h must be (c k), got shape {tuple(h.shape)}")
    m1, m2 = _split(m)
    spectrum = torch.fft.fft(h.detach().float(), n=m)  # (c m)
    tile = spectrum.unflatten(-1, (m2, m1)).transpose(-1, -2)  # (c m1 m2)
    return torch.stack([tile.real, tile.imag], 1).flatten(-2).contiguous()


def _spectrum_size(spectrum: Tensor) -> tuple[int, int]:
    check(
        spectrum.ndim == 3 and spectrum.shape[1] == 2,
        f"spectrum must be (c, 2, m) from filter_spectrum, got {tuple(spectrum.shape)}",
    )
    return spectrum.shape[0], spectrum.shape[2]


def _rows(u: Tensor, c: int) -> tuple[int, int]:
    check(u.ndim == 2, f"u must be (rows, n), got shape {tuple(u.shape)}")
    check(u.shape[0] % c == 0, f"{u.shape[0]} rows are not a multiple of {c} channels")
    return u.shape[0] // c, u.shape[1]


def conv_forward(
    u: Tensor, spectrum: Tensor, D: Tensor | None = None, *, conj: bool = False,
    rows_per_program: int = ROWS_PER_PROGRAM, precision: str = "ieee",
) -> Tensor:  # fmt: skip
    """Step 3: u (b*c, n) rows, channel = row % c; spectrum (c, 2, m) from
    ``filter_spectrum``; D (b*c,) or None. Returns y (b*c, n) in u's dtype: the
    first n outputs of the circular convolution of size m (of the correlation if
    ``conj``), plus D u. One program per channel and ``rows_per_program`` rows."""
    check_positive(rows_per_program=rows_per_program)
    c, m = _spectrum_size(spectrum)
    b, n = _rows(u, c)
    check(m >= 2 * n, f"FFT size {m} must be at least 2n = {2 * n}")
    _check_size(m)
    check_device(u, spectrum)
    (m1, m2), u = _split(m), u.to(compute_dtype(u.dtype)).contiguous()
    y = torch.empty_like(u)
    d = _per_row(D, u)
    grid = (c, triton.cdiv(b, rows_per_program))
    _choose(_conv_fwd_kernel, _fwd_tuned)[grid](
        u, spectrum, d, y, n, c, b, rows_per_program, M1=m1, M2=m2,
        HAS_D=D is not None, CONJ=conj, IEEE=_ieee(precision),
    )  # fmt: skip
    return y


def _per_row(D: Tensor | None, u: Tensor) -> Tensor:
    if D is None:
        return u  # a pointer the kernel never reads
    check(D.shape == u.shape[:1], f"D must be ({u.shape[0]},) per row, got {D.shape}")
    return D.float().contiguous()


def conv_backward(
    dy: Tensor, u: Tensor, spectrum: Tensor, D: Tensor | None, k: int,
    *, precision: str = "ieee",
) -> tuple[Tensor, Tensor, Tensor | None]:  # fmt: skip
    """Step 4: du (b*c, n) in u's dtype, dh (c, k) and dD (b*c,) in float32."""
    c, m = _spectrum_size(spectrum)
    b, n = _rows(u, c)
    check(dy.shape == u.shape, f"dy must have u's shape {tuple(u.shape)}")
    check(1 <= k <= n, f"k must be in 1..{n}, got {k}")
    u = u.to(compute_dtype(u.dtype)).contiguous()
    dy = dy.to(u.dtype).contiguous()
    du = torch.empty_like(u)
    dh = torch.empty(c, k, device=u.device, dtype=torch.float32)
    dD = torch.empty(u.shape[0], device=u.device, dtype=torch.float32)
    m1, m2 = _split(m)
    _choose(_conv_bwd_kernel, _bwd_tuned)[(c,)](
        dy, u, spectrum, _per_row(D, u), du, dh, dD, n, k, c, b,
        M1=m1, M2=m2, HAS_D=D is not None, IEEE=_ieee(precision),
    )  # fmt: skip
    return du, dh, (dD if D is not None else None)


class FFTConv(torch.autograd.Function):
    """Saves u, the spectrum and D (no length-m intermediate); the backward runs the
    adjoint kernel and recomputes fft(u) there, as FlashFFTConv does."""

    @staticmethod
    def forward(ctx, u: Tensor, h: Tensor, D: Tensor | None, precision: str) -> Tensor:
        m, _, _ = fft_size(u.shape[-1])
        spectrum = filter_spectrum(h, m)
        ctx.save_for_backward(u, spectrum, D)
        ctx.dtypes, ctx.k, ctx.precision = (h.dtype, u.dtype), h.shape[-1], precision
        y = conv_forward(u, spectrum, D, precision=precision)
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, ...]:
        u, spectrum, D = ctx.saved_tensors
        du, dh, dD = conv_backward(dy, u, spectrum, D, ctx.k, precision=ctx.precision)
        h_dtype, u_dtype = ctx.dtypes
        if D is not None and dD is not None:
            dD = dD.to(D.dtype)
        return du.to(u_dtype), dh.to(h_dtype), dD, None


def fft_conv(
    u: Tensor, h: Tensor, D: Tensor | None = None, *, precision: str = "ieee"
) -> Tensor:
    """Causal convolution of u (... d n) with h (d k) or (k,), plus D * u: the fused
    Triton kernel, same arguments and answer as ``minimodels.conv.fft_conv``.

    u is float16, bfloat16 or float32 (computed in float32, returned in u's dtype),
    n <= 2048; differentiable in u, h and D.
    """
    _check_conv(u, h, D)
    check(
        u.dtype in (torch.float16, torch.bfloat16, torch.float32),
        f"u must be float16, bfloat16 or float32 (the kernel computes in float32), "
        f"got {u.dtype}; minimodels.conv.fft_conv takes float64",
    )
    check_device(u, h, *([] if D is None else [D]))
    n, k = u.shape[-1], h.shape[-1]
    fft_size(n)  # the length check, before any work
    shape = torch.broadcast_shapes(u.shape[:-1], h.shape[:-1])
    if D is not None:
        shape = torch.broadcast_shapes(shape, D.shape)
    inner = shape[len(shape) - (h.ndim - 1) :]  # the axes h has filters along
    channels = math.prod(inner)
    u_rows = u.expand(*shape, n).reshape(-1, n)
    h_rows = h.expand(*inner, k).reshape(channels, k)
    D_rows = None if D is None else D.expand(shape).reshape(-1)
    y = FFTConv.apply(u_rows, h_rows, D_rows, precision)
    return y.reshape(*shape, n)


# --- Beyond one kernel: state passing for a diagonal SSM ---------------------------


def ssm_conv_chunked(
    u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, D: Tensor | None = None,
    *, chunk: int = MAX_FFT_SIZE // 2, precision: str = "ieee",
) -> Tensor:  # fmt: skip
    """FlashConv's state passing (H3 paper, Section 4): a diagonal SSM's
    convolution y = K * u + D u (``minimodels.ssm``, eq. (5)) at any length, the
    fused kernel on chunks of ``chunk`` positions and the SSM's state carried
    from one chunk to the next. For the chunk u_j starting at position T, of
    length L, with x the state after position T - 1 (zero before the first):

        y_{T+t} = (K[:L] * u_j)_t + D u_{T+t} + 2 Re(C A_bar^(t+1) x)
        x <- A_bar^L x + sum_t A_bar^(L-1-t) B_bar u_{T+t}

    u (b d n) real; A_bar, B_bar, C (d s) complex, one mode of each conjugate
    pair (``S4D.discrete()``, ``S4D.C``); D (d,). Differentiable in all of them.
    """
    check(u.ndim == 3, f"u must be (b d n), got shape {tuple(u.shape)}")
    check(
        A_bar.shape == B_bar.shape == C.shape and A_bar.shape[0] == u.shape[1],
        f"A_bar, B_bar, C must be (d s) with d = {u.shape[1]}, got "
        f"{tuple(A_bar.shape)}, {tuple(B_bar.shape)}, {tuple(C.shape)}",
    )
    check_positive(chunk=chunk)
    check(
        chunk <= MAX_FFT_SIZE // 2,
        f"chunk must be at most {MAX_FFT_SIZE // 2} (the kernel's limit), got {chunk}",
    )
    n = u.shape[-1]
    length = min(chunk, n)
    lags = torch.arange(length + 1, device=u.device)
    powers = A_bar[..., None] ** lags  # (d s l+1): A_bar^l
    K = 2 * torch.einsum("ds,dsl->dl", C * B_bar, powers[..., :length]).real
    x = u.new_zeros(u.shape[0], *A_bar.shape, dtype=A_bar.dtype)  # (b d s)
    ys = []
    for start in range(0, n, chunk):
        u_j = u[..., start : start + chunk]
        L = u_j.shape[-1]
        echo = torch.einsum("ds,bds,dsl->bdl", C, x, powers[..., 1 : L + 1])
        y = fft_conv(u_j, K[:, :L], D, precision=precision)
        ys.append(y + 2 * echo.real.to(y.dtype))
        decay = powers[..., :L].flip(-1)  # A_bar^(L-1-t)
        x = powers[..., L] * x + B_bar * torch.einsum("dsl,bdl->bds", decay, u_j + 0j)
    return torch.cat(ys, dim=-1)


# --- Counting what a kernel moves (interpreter only) --------------------------------


def interpreter_io(fn: Callable[[], object]) -> dict[str, int]:
    """What the Triton kernels launched by ``fn()`` do, counted in the interpreter's
    own operations: bytes loaded ("read") and stored ("written"), element by
    element with masked-off lanes excluded, and the matrix products ("dots", with
    their multiply-adds in "macs"). Exact, the same on any machine; needs
    TRITON_INTERPRET=1."""
    check(interpreted(), "interpreter_io needs TRITON_INTERPRET=1")
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    load, store = builder.create_masked_load, builder.create_masked_store
    dot_ = builder.create_dot
    counts = {"read": 0, "written": 0, "dots": 0, "macs": 0}

    def nbytes(ptrs, mask) -> int:  # noqa: ANN001
        size = np.dtype(interpreter._get_np_dtype(ptrs.get_element_ty())).itemsize
        return int(np.broadcast_to(mask.data, ptrs.data.shape).sum()) * size

    def counted_load(self, ptrs, mask, other, *args):  # noqa: ANN001, ANN002, ANN202
        counts["read"] += nbytes(ptrs, mask)
        return load(self, ptrs, mask, other, *args)

    def counted_store(self, ptrs, value, mask, *args):  # noqa: ANN001, ANN002, ANN202
        counts["written"] += nbytes(ptrs, mask)
        return store(self, ptrs, value, mask, *args)

    def counted_dot(self, a, b, *args):  # noqa: ANN001, ANN002, ANN202
        (rows, inner), cols = a.data.shape, b.data.shape[1]
        counts["dots"] += 1
        counts["macs"] += rows * inner * cols
        return dot_(self, a, b, *args)

    patched = {
        "create_masked_load": counted_load,
        "create_masked_store": counted_store,
        "create_dot": counted_dot,
    }
    original = {name: getattr(builder, name) for name in patched}
    try:
        for name, method in patched.items():
            setattr(builder, name, method)
        fn()
    finally:
        for name, method in original.items():
            setattr(builder, name, method)
    return counts
