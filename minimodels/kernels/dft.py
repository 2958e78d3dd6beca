"""The DFT in Triton, steps 1 and 2 of FlashConv (``minimodels.kernels.fftconv``).

Triton has no complex dtype: every complex matrix is two real ones (planes), and a
complex product is four real ``tl.dot``s (``_cdot``). The DFT matrices and
twiddles are computed in registers (cos and sin of exact integer angles), never
loaded. Step 1, ``dft``: a length-m DFT as one matmul x @ F_m (m <= 128, one
tile). Step 2, ``monarch_dft``: with m = m1 m2 the DFT is two small dense products
and a twiddle product (``minimodels.conv.fft_monarch``),

    A[j1, j2] = x[m2 j1 + j2],   X[k1, k2] = fft(x)[k1 + m1 k2],
    X = ((F_m1 @ A) * W) @ F_m2,   W[k1, j2] = omega_m^(k1 j2),
    A = conj(F_m1) @ ((X @ conj(F_m2)) * conj(W)) / m          (the inverse)

for m a power of two from 256 (16 x 16: ``tl.dot`` needs blocks of 16) to 4096
(64 x 64). The fused convolution kernels of ``fftconv`` are built from the same
Triton functions (``_factors``, ``_monarch_forward``, ``_monarch_inverse_real``).
Arithmetic is fp32, IEEE dots unless ``precision="tf32"``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from minimodels._util import check
from minimodels.kernels.tiles import check_device, dot

__all__ = ["MIN_FFT_SIZE", "MAX_FFT_SIZE", "dft", "monarch_dft"]

MIN_FFT_SIZE = 256  # 16 x 16: the smallest blocks tl.dot takes
MAX_FFT_SIZE = 4096  # 64 x 64 complex fp32 tiles per program: n <= 2048
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


# --- Python side: planes, sizes, launches ---------------------------------------------


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
