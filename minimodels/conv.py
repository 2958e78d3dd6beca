"""Long convolutions: the Toeplitz view, the FFT route and the FFT as matmuls.

A causal convolution of a length-n signal u with a filter h,

    y_t = sum_{s=0}^{t} h_{t-s} u_s,                                  (1)

is multiplication by the lower-triangular Toeplitz matrix T[t, s] = h_{t-s}
(``toeplitz``, ``conv_toeplitz``); the sum itself is ``conv_direct``. Zero-padded
to size m = 2n, T is the top-left block of a circulant matrix, which the DFT
diagonalizes: C = F^-1 diag(F c) F (``circulant``). So the FFT computes (1) in
O(n log n) (``fft_conv``): pad u and h to 2n, multiply their spectra, transform
back and keep the first n outputs; the padding keeps the circular wrap-around
away from those outputs.

The FFT itself is a product of small dense matrices. With m = m1 m2,
n = m2 n1 + n2 and k = k1 + m1 k2 (Cooley and Tukey, 1965),

    X[k1 + m1 k2] = sum_{n2} F_{m2}[k2, n2] W[k1, n2]
                      * sum_{n1} F_{m1}[k1, n1] x[m2 n1 + n2]

with twiddle factors W[k1, n2] = omega_m^{k1 n2}, omega_m = exp(-2 pi i / m): a
matmul with the m1 x m1 DFT matrix, an elementwise product, a matmul with the
m2 x m2 DFT matrix (``fft_monarch``; recursing on m2 gives more, smaller
factors). These are Monarch matrices (Dao et al., "Monarch: Expressive
Structured Matrices for Efficient and Accurate Training", 2022,
arXiv:2204.00595), and this is how FlashFFTConv runs the FFT on tensor cores
(Fu, Kumbong, Nguyen and Re, "FlashFFTConv: Efficient Convolutions for Long
Sequences with Tensor Cores", 2023, arXiv:2311.05908); ``fft_conv_monarch`` is
an FFT convolution made of matmuls only. H3 (arXiv:2212.14052) and Hyena
(arXiv:2302.10866) pair such long convolutions with a short one (``ShortConv``).

Shapes: b batch, d channels, n sequence length, k filter length (k <= n),
m transform size. Signals are (... d n); filters are (d k), one per channel, or
(k,), shared by all channels; the skip term D is (d,).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimodels._util import check, check_ndim, check_positive
from minimodels.optim import set_optim

__all__ = [
    "toeplitz",
    "circulant",
    "conv_direct",
    "conv_toeplitz",
    "fft_conv",
    "dft_matrix",
    "twiddle_factors",
    "monarch_factors",
    "fft_monarch",
    "fft_conv_monarch",
    "MonarchConv",
    "ShortConv",
]


# --- shared argument handling ---------------------------------------------------


def _check_floating(name: str, t: Tensor) -> None:
    check(
        t.is_floating_point(),
        f"{name} must be a floating-point tensor, got {t.dtype} (an integer "
        "signal or filter would be truncated)",
    )


def _check_conv(u: Tensor, h: Tensor, D: Tensor | None) -> None:
    check(u.ndim >= 1, "u must have shape (... d n)")
    check(h.ndim >= 1, "h must have shape (d k) or (k,)")
    _check_floating("u", u)
    _check_floating("h", h)
    if D is not None:
        _check_floating("D", D)
    n = u.shape[-1]
    check(n >= 1, f"u must hold at least one position, got shape {tuple(u.shape)}")
    check(h.shape[-1] >= 1, f"h must hold at least one tap, got {tuple(h.shape)}")
    check(h.shape[-1] <= n, f"h (length {h.shape[-1]}) longer than u (length {n})")
    try:
        torch.broadcast_shapes(u.shape[:-1], h.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"h of shape {tuple(h.shape)} does not match u of shape {tuple(u.shape)}"
            " (h is (d k) or (k,) for u (... d n))"
        ) from None
    if D is not None:
        try:
            torch.broadcast_shapes(u.shape[:-1], D.shape)
        except RuntimeError:
            raise ValueError(
                f"D of shape {tuple(D.shape)} does not match u of shape "
                f"{tuple(u.shape)} (D is (d,) for u (... d n))"
            ) from None


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _skip(y: Tensor, u: Tensor, D: Tensor | None) -> Tensor:
    return y if D is None else y + u * D.to(y.dtype)[..., None]


# --- the plain references --------------------------------------------------------


def toeplitz(h: Tensor, n: int) -> Tensor:
    """The causal Toeplitz matrix T[t, s] = h[t - s] (0 for s > t or t - s >= k).

    h: (... k) -> (... n n). Differentiable in h; equation (1) is ``T @ u``.
    """
    check_positive(n=n)
    k = h.shape[-1]
    lag = torch.arange(n, device=h.device)[:, None] - torch.arange(n, device=h.device)
    inside = (lag >= 0) & (lag < k)  # (n n)
    h = F.pad(h, (0, 1))  # index k is a zero that every lag outside [0, k) reads
    return h[..., torch.where(inside, lag, k)]


def circulant(c: Tensor) -> Tensor:
    """The circulant matrix C[t, s] = c[(t - s) mod m]: (... m) -> (... m m)."""
    m = c.shape[-1]
    lag = (
        torch.arange(m, device=c.device)[:, None] - torch.arange(m, device=c.device)
    ) % m
    return c[..., lag]


def conv_direct(u: Tensor, h: Tensor, D: Tensor | None = None) -> Tensor:
    """Equation (1) as written: y_t = sum_j h_j u_{t-j}, one shifted copy per lag j.

    u: (... d n), h: (d k) or (k,), D: (d,) -> (... d n). O(n k) work.
    """
    _check_conv(u, h, D)
    n = u.shape[-1]
    y = torch.zeros_like(u)
    for j in range(h.shape[-1]):
        shifted = F.pad(u[..., : n - j], (j, 0))  # u_{t-j}, zero for t < j
        y = y + h[..., j, None] * shifted
    return _skip(y, u, D)


def conv_toeplitz(u: Tensor, h: Tensor, D: Tensor | None = None) -> Tensor:
    """Equation (1) as a matmul with the (n n) Toeplitz matrix: O(n^2) work."""
    _check_conv(u, h, D)
    T = toeplitz(h, u.shape[-1])  # (d n n) or (n n)
    y = (T @ u[..., None])[..., 0]
    return _skip(y, u, D)


# --- the FFT route ---------------------------------------------------------------


def fft_conv(u: Tensor, h: Tensor, D: Tensor | None = None) -> Tensor:
    """Causal convolution of u (... d n) with h (d n) or (n,), plus D * u.

    Computed with real FFTs of size 2n in float32 (or float64) whatever the input
    dtype, and returned in the input's dtype. h may be shorter than n.
    """
    _check_conv(u, h, D)
    n = u.shape[-1]
    compute = _compute_dtype(u)
    size = 2 * n
    u_f = torch.fft.rfft(u.to(compute), n=size)
    h_f = torch.fft.rfft(h.to(compute), n=size)
    y = torch.fft.irfft(u_f * h_f, n=size)[..., :n]
    return _skip(y, u.to(compute), D).to(u.dtype)


# --- the FFT as matrix multiplications -------------------------------------------


def _complex(dtype: torch.dtype) -> torch.dtype:
    return (
        torch.complex128
        if dtype in (torch.float64, torch.complex128)
        else (torch.complex64)
    )


def _roots(exponent: Tensor, m: int, dtype: torch.dtype) -> Tensor:
    """omega_m ** exponent, exact in float64 (exponent reduced mod m first)."""
    angle = (-2 * math.pi / m) * (exponent % m).to(torch.float64)
    return torch.polar(torch.ones_like(angle), angle).to(_complex(dtype))


def dft_matrix(
    m: int,
    *,
    inverse: bool = False,
    dtype: torch.dtype = torch.complex64,
    device: torch.device | str | None = None,
) -> Tensor:
    """The (m m) DFT matrix F[k, j] = omega_m^{kj}, so that ``F @ x == fft(x)``.

    ``inverse=True`` gives F^-1 = conj(F) / m.
    """
    check_positive(m=m)
    j = torch.arange(m, device=device)
    F_m = _roots(j[:, None] * j, m, dtype)
    return F_m.conj() / m if inverse else F_m


def twiddle_factors(
    m1: int,
    m2: int,
    *,
    dtype: torch.dtype = torch.complex64,
    device: torch.device | str | None = None,
) -> Tensor:
    """W[k1, n2] = omega_{m1 m2}^{k1 n2}: the (m1 m2) elementwise step between the
    two DFT matmuls of the Cooley-Tukey split."""
    check_positive(m1=m1, m2=m2)
    k1 = torch.arange(m1, device=device)[:, None]
    n2 = torch.arange(m2, device=device)
    return _roots(k1 * n2, m1 * m2, dtype)


def monarch_factors(m: int, *, max_factor: int | None = None) -> tuple[int, ...]:
    """Factors m = m1 m2 ... for ``fft_monarch``.

    Without ``max_factor``: two factors, m1 the largest divisor of m that is at
    most sqrt(m) (a prime m stays one dense DFT). With ``max_factor`` r: greedily
    the largest divisor <= r each time, so a power of two splits into log_r m
    factors and the work is O(m r log_r m); a prime factor > r stays whole.
    """
    check_positive(m=m)
    if max_factor is None:
        m1 = max(d for d in range(1, math.isqrt(m) + 1) if m % d == 0)
        return (m,) if m1 == 1 else (m1, m // m1)
    check(max_factor >= 2, f"max_factor must be at least 2, got {max_factor}")
    factors, rest = [], m
    while rest > 1:
        d = max(
            (d for d in range(2, min(max_factor, rest) + 1) if rest % d == 0),
            default=rest,
        )
        factors.append(d)
        rest //= d
    return tuple(factors) or (1,)


def fft_monarch(x: Tensor, factors: Sequence[int] | None = None) -> Tensor:
    """The DFT along the last axis, as DFT matmuls and twiddle products only.

    x: (... m), real or complex -> complex (... m), equal to ``torch.fft.fft(x)``.
    ``factors`` (product m) picks the split; default ``monarch_factors(m)``.
    """
    m = x.shape[-1]
    factors = tuple(factors) if factors is not None else monarch_factors(m)
    check(math.prod(factors) == m, f"factors {factors} must multiply to m = {m}")
    check(all(f >= 1 for f in factors), f"factors must be positive, got {factors}")
    x = x.to(_complex(x.dtype))
    return _monarch(x, factors)


def _monarch(x: Tensor, factors: tuple[int, ...]) -> Tensor:
    m1, m = factors[0], x.shape[-1]
    dev, dtype = x.device, x.dtype
    if len(factors) == 1:
        return x @ dft_matrix(m, dtype=dtype, device=dev)  # F is symmetric
    m2 = m // m1
    A = x.unflatten(-1, (m1, m2))  # A[n1, n2] = x[m2 n1 + n2]
    B = dft_matrix(m1, dtype=dtype, device=dev) @ A  # sum over n1: (... m1 m2)
    C = B * twiddle_factors(m1, m2, dtype=dtype, device=dev)
    X = _monarch(C, factors[1:])  # length-m2 DFTs along n2: X[k1, k2]
    return X.transpose(-1, -2).flatten(-2)  # output index k1 + m1 k2


def fft_conv_monarch(
    u: Tensor,
    h: Tensor,
    D: Tensor | None = None,
    *,
    factors: Sequence[int] | None = None,
) -> Tensor:
    """``fft_conv`` with every DFT done by ``fft_monarch``: matmuls only.

    The inverse uses F^-1 x = conj(F conj(x)) / m. ``factors`` splits m = 2n.
    """
    _check_conv(u, h, D)
    n = u.shape[-1]
    m = 2 * n
    compute = _compute_dtype(u)
    u_f = fft_monarch(F.pad(u.to(compute), (0, m - n)), factors)
    h_f = fft_monarch(F.pad(h.to(compute), (0, m - h.shape[-1])), factors)
    y = fft_monarch((u_f * h_f).conj(), factors).conj().real[..., :n] / m
    return _skip(y, u.to(compute), D).to(u.dtype)


# --- learning the factors ---------------------------------------------------------


class MonarchConv(nn.Module):
    """``fft_conv`` whose filter reaches the frequency domain through a learned
    two-factor Monarch matrix, initialised to the DFT (Dao et al., 2022).

    The split of ``fft_monarch`` with its factors made free: M = P R L, where L
    holds m2 blocks (m1 m1), one per column n2 of the (m1 m2) grid (the DFT has
    F_{m1} in each), and R holds m1 blocks (m2 m2), one per row k1 (the DFT has
    F_{m2} diag(W[k1]) in each: the twiddles fold into R). Complex entries are
    stored as real pairs: 2 m (m1 + m2) real parameters, shared by all channels.

    Causality: y = F^-1 (F u . M h) is causal for every M only if the lags it
    puts on the circle's far half, n .. 2n-1 (the anti-causal ones), are zero.
    So the layer maps the filter back, h' = Re(F^-1 M [h; 0])[:n], and runs
    ``fft_conv(u, h', D)``: the signal's transforms stay the exact FFT, the
    learned factors shape the filter, and the output before t never sees u_t.
    At initialisation M = F and h' = h: the layer is ``fft_conv`` exactly.
    """

    def __init__(self, n: int, *, factors: Sequence[int] | None = None) -> None:
        super().__init__()
        check_positive(n=n)
        m = 2 * n
        split = tuple(factors) if factors is not None else monarch_factors(m)
        check(len(split) <= 2, f"MonarchConv takes two factors, got {split}")
        m1, m2 = (1, m) if len(split) == 1 else split  # (m,): one dense block
        check(m1 * m2 == m, f"factors ({m1}, {m2}) must multiply to 2n = {m}")
        self.n, self.m1, self.m2 = n, m1, m2
        # the factors are the DFT's plus learned offsets dL, dR (zero at init), so
        # that the DFT part is exact in any dtype; Adam moves L and R the same way
        self.dL = nn.Parameter(torch.zeros(m2, m1, m1, 2))
        self.dR = nn.Parameter(torch.zeros(m1, m2, m2, 2))
        set_optim(self, ["dL", "dR"], weight_decay=0.0)

    def dft_factors(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The DFT's blocks: L[n2] = F_{m1} (m2 m1 m1), R[k1] = F_{m2} diag(W[k1])
        (m1 m2 m2)."""
        m1, m2, dev = self.m1, self.m2, self.dL.device
        W = twiddle_factors(m1, m2, dtype=dtype, device=dev)
        R = dft_matrix(m2, dtype=dtype, device=dev) * W[:, None, :]
        return dft_matrix(m1, dtype=dtype, device=dev).expand(m2, m1, m1), R

    def factors(self, dtype: torch.dtype = torch.complex64) -> tuple[Tensor, Tensor]:
        """The learned blocks L (m2 m1 m1) and R (m1 m2 m2), complex."""
        L, R = self.dft_factors(dtype)
        dL, dR = (torch.view_as_complex(p).to(dtype) for p in (self.dL, self.dR))
        return L + dL, R + dR

    def distance_from_dft(self) -> float:
        """||(L, R) - DFT's|| / ||DFT's||: 0 at initialisation."""
        L, R = self.dft_factors(torch.complex128)
        moved = self.dL.detach().square().sum() + self.dR.detach().square().sum()
        size = L.abs().square().sum() + R.abs().square().sum()
        return math.sqrt(moved.item() / size.item())

    def transform(self, x: Tensor) -> Tensor:
        """M x for x (... m) complex: at initialisation ``fft_monarch(x)``."""
        L, R = self.factors(x.dtype)
        A = x.unflatten(-1, (self.m1, self.m2))  # A[n1, n2] = x[m2 n1 + n2]
        B = torch.einsum("jkn,...nj->...kj", L, A)  # per column n2: (... m1 m2)
        X = torch.einsum("kln,...kn->...kl", R, B)  # per row k1: X[k1, k2]
        return X.transpose(-1, -2).flatten(-2)  # output index k1 + m1 k2

    def filter(self, h: Tensor) -> Tensor:
        """The causal filter h' = Re(F^-1 M [h; 0])[:n] that the layer applies."""
        check(h.shape[-1] <= self.n, f"h longer than n = {self.n}")
        m, compute = 2 * self.n, _compute_dtype(h)
        x = F.pad(h.to(compute), (0, m - h.shape[-1])).to(_complex(compute))
        return torch.fft.ifft(self.transform(x)).real[..., : self.n]

    def forward(self, u: Tensor, h: Tensor, D: Tensor | None = None) -> Tensor:
        """u (... d n), h (d k) or (k,), D (d,) -> (... d n), like ``fft_conv``."""
        _check_conv(u, h, D)
        check(u.shape[-1] == self.n, f"u must have length n = {self.n}")
        return fft_conv(u, self.filter(h).to(h.dtype), D)


# --- the short convolution of H3 and Hyena -----------------------------------------


class ShortConv(nn.Module):
    """Depthwise causal convolution with a short kernel (k = 3 in H3 and Hyena).

    (b d n) -> (b d n); output t sees inputs t-k+1 .. t. In the notation of (1)
    its filter is ``self.filter()`` (d k), so ``forward(x) == conv_direct(x,
    self.filter()) + bias``. ``step`` decodes one position at a time.
    """

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        check_positive(dim=dim, kernel_size=kernel_size)
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(dim, dim, kernel_size, groups=dim, padding=0)

    def forward(self, x: Tensor) -> Tensor:  # x: (b d n)
        return self.conv(F.pad(x, (self.kernel_size - 1, 0)))

    def filter(self) -> Tensor:
        """h[c, j]: the weight on input t - j (Conv1d correlates, so flip)."""
        return self.conv.weight[:, 0].flip(-1)  # (d k)

    def init_state(self, batch: int) -> Tensor:
        """The last k - 1 inputs, zeros before the sequence starts: (b d k-1)."""
        w = self.conv.weight
        return w.new_zeros(batch, w.shape[0], self.kernel_size - 1)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One position: x_t (b d) -> y_t (b d), and the shifted state."""
        check_ndim("x_t", x_t, 2, "b d")
        window = torch.cat([state, x_t[..., None]], dim=-1)  # (b d k)
        y_t = (window * self.conv.weight[:, 0]).sum(-1)
        if self.conv.bias is not None:
            y_t = y_t + self.conv.bias
        return y_t, window[..., 1:]
