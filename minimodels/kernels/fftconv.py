"""FlashConv: the causal FFT convolution as one Triton kernel, grown in steps.

H3's FlashConv ("Hungry Hungry Hippos: Towards Language Modeling with State Space
Models", Fu, Dao et al., 2022, arXiv:2212.14052, Section 4) and FlashFFTConv
("FlashFFTConv: Efficient Convolutions for Long Sequences with Tensor Cores", Fu,
Kumbong, Nguyen and Re, 2023, arXiv:2311.05908) fuse the forward FFT, the
pointwise product with the filter's spectrum and the inverse FFT in one kernel, so
the length-m (m >= 2n) intermediate never goes to memory.

Steps 1 and 2, the DFT in Triton (complex numbers as two real planes, the DFT as
one matmul, then as two Monarch factors and twiddles, m = m1 m2), are in
``minimodels.kernels.dft``; this module builds on them. Step 3 ``conv_forward``,
the fused forward DFT -> times the filter spectrum (kept in the kernel's [k1, k2]
order, as FlashFFTConv keeps it) -> inverse DFT -> first n outputs + D u, one
program per channel and block of batch rows; step 4 ``fft_conv``, an autograd
Function whose backward (``conv_backward``) is the adjoint: du is the same
convolution with the conjugate spectrum (a correlation), dh the correlation of dy
with u summed over the batch in the frequency domain, dD = sum_t dy u. Beyond one
kernel, ``ssm_conv_chunked`` is FlashConv's state passing: a diagonal SSM's
convolution at any length, chunk by chunk. (What the kernels load and store is
counted by ``minimodels.kernels.io.interpreter_io``.)

FFT sizes are powers of two from ``MIN_FFT_SIZE`` = 256 to ``MAX_FFT_SIZE`` =
4096, so n <= 2048; on a GPU the two convolution kernels are autotuned (warps,
stages) once per FFT size. Arithmetic is fp32 (IEEE dots unless
``precision="tf32"``); inputs may be fp16, bf16 or fp32 (bf16 is converted to fp32
first under the interpreter, whose bf16 is wrong). Offsets are int64.

Shapes: b batch, d channels, n length, k filter length (k <= n), m = m1 m2 FFT size;
u (... d n), h (d k) or (k,), D (d,); a "row" is one (batch, channel) signal.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from minimodels._util import check, check_positive
from minimodels.conv import _check_conv
from minimodels.kernels.dft import (
    MAX_FFT_SIZE,
    MIN_FFT_SIZE,
    _check_size,
    _cmul,
    _factors,
    _ieee,
    _monarch_forward,
    _monarch_inverse_real,
    _split,
    _tile,
)
from minimodels.kernels.tiles import check_device, compute_dtype, interpreted

__all__ = [
    "MIN_FFT_SIZE",
    "MAX_FFT_SIZE",
    "fft_size",
    "filter_spectrum",
    "conv_forward",
    "conv_backward",
    "FFTConv",
    "fft_conv",
    "ssm_conv_chunked",
]

ROWS_PER_PROGRAM = 4  # batch rows of one channel per program (spectrum loaded once)


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
