"""Hyena: long implicit convolutions interleaved with data-controlled gating.

"Hyena Hierarchy: Towards Larger Convolutional Language Models" (Poli, Massaroli,
Nguyen, Fu, Dao, Baccus, Bengio, Ermon, Re, ICML 2023, arXiv:2302.10866), and its
reference code (HazyResearch/safari: ``HyenaOperator``, ``HyenaFilter``,
``PositionalEmbedding``, ``ExponentialModulation``, ``Sin``).

From the input u, N + 1 projections (a linear map, then a short causal depthwise
convolution of length 3): x^1 .. x^N and v. Then the order-N recurrence (Alg. 3)

    z^1 = v,   z^{i+1} = x^i ⊙ (h^i * z^i + D^i z^i),   y = z^{N+1},         (1)

with * the causal convolution and D^i a learned skip (the filter's bias). Each
step is linear in z, so y = H(u) v with a data-controlled matrix (eq. 5)

    H(u) = D_x^N S^N ... D_x^2 S^2 D_x^1 S^1,                                  (2)

D_x^i = diag(x^i) and S^i the lower-triangular Toeplitz matrix of h^i (plus
D^i on its diagonal): ``hyena_matrix``. Computed with FFTs, (1) costs
O(N d n log n); materialized, (2) costs O(d n^2). The filters are implicit
(Section 3.3): one small network of the time t gives every channel's value,

    h_t = Window(t) · FFN(PositionalEncoding(t)),                               (3)

PositionalEncoding(t) = [t, cos(2π f t'/L), -sin(2π f t'/L)] at B = (emb_dim - 1)/2
frequencies f = linspace(1e-4, B - 1, B), as in safari: with the default emb_dim = 3
(safari's default too) the only band is f = 1e-4, whose cos and sin are constant to
within 1e-3, so only t varies; emb_dim = 5 (safari's recall config) adds f = 1.
FFN = Linear, then (Linear, Sin) layers with a Sin activation sin(w x) of learned
frequency w, and Window(t) = exp(-abs(δ_c) t) + shift, a fixed exponential decay
whose rate δ_c runs from slow to fast across the N d filter channels. As in
safari's ``HyenaOperator`` the channels are dealt out to the N filters
*interleaved* (channel j goes to filter j mod N, as safari's rearrange
``(v o) -> o v``), so every filter h^i spans the whole slow-to-fast range (safari's
``standalone_hyena.py`` splits them into contiguous blocks instead). The filters
are generated at ``max_len`` positions; a shorter input uses their prefix, so a
filter is the same function of the lag at every input length.

Variants (``filter=``): "implicit" (3); "explicit", a free parameter per lag;
"s4d", the kernel of a diagonal SSM (``minimodels.ssm.S4D``). H3 (Fu et al.,
2023, arXiv:2212.14052) is order 2 with SSM filters: ``h3_as_hyena``.

Differences from the safari code, on purpose: (1) has N long filters as in the
paper's Algorithm 3; safari's ``HyenaOperator`` (src/models/sequence/hyena.py)
gates first and uses N - 1 long filters, the short convolution on v playing the
first filter's part: safari's order N is this order N with h^1 = 0 and D^1 = 1,
and so has one FFT convolution and F d + d parameters (F = ``filter_order``)
fewer. Inputs longer than ``max_len`` are an error (safari silently truncates
the filter). safari requires N >= 2; here N = 1 is a gated long convolution.

Shapes: b batch, n sequence, d channels (model dim), o order (N), l filter
length, e positional-encoding width, f filter-MLP width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from minimodels._util import check, check_ndim, check_positive, config_from
from minimodels.conv import ShortConv, conv_toeplitz, fft_conv, toeplitz
from minimodels.optim import set_optim

__all__ = [
    "FILTERS",
    "HyenaConfig",
    "Sin",
    "PositionalEmbedding",
    "ExponentialModulation",
    "HyenaFilter",
    "ExplicitFilter",
    "S4DFilter",
    "hyena_recurrence",
    "hyena_matrix",
    "HyenaOperator",
    "h3_as_hyena",
]

FILTERS = ("implicit", "explicit", "s4d")


@dataclass(frozen=True)
class HyenaConfig:
    """Every option of ``HyenaOperator``; the defaults are safari's."""

    dim: int
    max_len: int
    order: int = 2  # N: number of (long convolution, gate) steps
    filter_order: int = 64  # width of the implicit filter's MLP
    emb_dim: int = 3  # positional encoding width: t plus (emb_dim - 1)/2 cos/sin
    filter: str = "implicit"  # one of FILTERS
    num_inner_mlps: int = 2  # hidden (Linear, Sin) layers of the filter MLP
    sin_freq: float = 1.0  # initial w of the Sin activation
    short_kernel: int = 3  # the short convolution on the projections
    fast_decay_pct: float = 0.3  # window: fastest channel reaches target at t=0.3
    slow_decay_pct: float = 1.5  # ... slowest channel at t = 1.5
    target: float = 1e-2
    shift: float = 0.0  # added to the window
    d_state: int = 64  # state size of the "s4d" filters
    filter_lr: float = 1e-3  # learning rate of the filter MLP (no weight decay)
    pos_emb_lr: float = 1e-5  # of the positional encoding (0: a fixed buffer)
    fast: bool = True  # FFT convolutions; False: materialized Toeplitz matrices

    def __post_init__(self) -> None:
        check_positive(dim=self.dim, max_len=self.max_len, order=self.order)
        check_positive(filter_order=self.filter_order, short_kernel=self.short_kernel)
        check_positive(d_state=self.d_state, filter_lr=self.filter_lr)
        check(
            self.emb_dim >= 3 and self.emb_dim % 2 == 1,
            f"emb_dim must be odd and >= 3 (t, cos, sin), got {self.emb_dim}",
        )
        check(
            self.filter in FILTERS,
            f"filter must be one of {FILTERS}, got {self.filter!r}",
        )
        check(self.num_inner_mlps >= 0, "num_inner_mlps must be >= 0")
        check(self.pos_emb_lr >= 0, f"pos_emb_lr must be >= 0, got {self.pos_emb_lr}")
        check(
            0 < self.fast_decay_pct <= self.slow_decay_pct,
            "need 0 < fast_decay_pct <= slow_decay_pct, got "
            f"{self.fast_decay_pct} and {self.slow_decay_pct}",
        )
        check(0 < self.target < 1, f"target must be in (0, 1), got {self.target}")


# --- the implicit filter, eq. (3) ----------------------------------------------------


class Sin(nn.Module):
    """sin(w x) with a learned frequency w per feature (f,)."""

    def __init__(self, dim: int, w: float = 1.0) -> None:
        super().__init__()
        self.freq = nn.Parameter(torch.full((dim,), float(w)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


class PositionalEmbedding(nn.Module):
    """z_t = [t, Re e^{-i 2π f t'/L}, Im e^{-i 2π f t'/L}] on the max_len grid.

    t = t'/(L - 1) in [0, 1] (t' = 0 .. L-1), f = linspace(1e-4, B - 1, B) with
    B = (emb_dim - 1)/2 bands, as in safari. ``forward(n)`` -> z (n e), t (n 1).
    """

    z: Tensor  # a parameter, or a buffer when lr = 0
    t: Tensor

    def __init__(self, emb_dim: int, max_len: int, lr: float = 1e-5) -> None:
        super().__init__()
        bands = (emb_dim - 1) // 2
        t = torch.linspace(0, 1, max_len)[:, None]  # (l 1)
        w = 2 * math.pi * torch.arange(max_len)[:, None] / max_len
        f = torch.linspace(1e-4, bands - 1, bands)[None]  # (1 B)
        z = torch.cat([t, torch.cos(f * w), -torch.sin(f * w)], dim=-1)  # (l e)
        if lr > 0:
            self.z = nn.Parameter(z)
            set_optim(self, lr=lr)
        else:
            self.register_buffer("z", z)
        self.register_buffer("t", t)

    def forward(self, n: int) -> tuple[Tensor, Tensor]:
        return self.z[:n], self.t[:n]


class ExponentialModulation(nn.Module):
    """Window(t) = exp(-abs(δ_c) t) + shift, rates δ_c from log(target)/slow_decay_pct
    to log(target)/fast_decay_pct across channels; fixed (not trained)."""

    deltas: Tensor

    def __init__(
        self,
        channels: int,
        *,
        fast_decay_pct: float = 0.3,
        slow_decay_pct: float = 1.5,
        target: float = 1e-2,
        shift: float = 0.0,
    ) -> None:
        super().__init__()
        slow, fast = (
            math.log(target) / slow_decay_pct,
            math.log(target) / fast_decay_pct,
        )
        self.register_buffer("deltas", torch.linspace(slow, fast, channels))
        self.shift = shift

    def forward(self, t: Tensor, h: Tensor) -> Tensor:  # t: (l 1), h: (l c)
        return h * (torch.exp(-t * self.deltas.abs()) + self.shift)


def _window(channels: int, config: HyenaConfig) -> ExponentialModulation:
    return ExponentialModulation(
        channels,
        fast_decay_pct=config.fast_decay_pct,
        slow_decay_pct=config.slow_decay_pct,
        target=config.target,
        shift=config.shift,
    )


class HyenaFilter(nn.Module):
    """Eq. (3): ``forward(n)`` -> (c n) filters, c = channels, n <= max_len."""

    def __init__(self, channels: int, config: HyenaConfig) -> None:
        super().__init__()
        c, f = channels, config.filter_order
        self.max_len = config.max_len
        self.pos_emb = PositionalEmbedding(
            config.emb_dim, config.max_len, config.pos_emb_lr
        )
        act = Sin(f, config.sin_freq)  # one activation, shared, as in safari
        layers: list[nn.Module] = [nn.Linear(config.emb_dim, f), act]
        for _ in range(config.num_inner_mlps):
            layers += [nn.Linear(f, f), act]
        layers.append(nn.Linear(f, c, bias=False))
        self.mlp = nn.Sequential(*layers)
        set_optim(self.mlp, lr=config.filter_lr)
        self.window = _window(c, config)

    def forward(self, n: int) -> Tensor:
        _check_len(n, self.max_len)
        z, t = self.pos_emb(n)
        return rearrange(self.window(t, self.mlp(z)), "l c -> c l")


class ExplicitFilter(nn.Module):
    """A free parameter per (channel, lag), initialized as noise times the window."""

    def __init__(self, channels: int, config: HyenaConfig) -> None:
        super().__init__()
        self.max_len = config.max_len
        window = _window(channels, config)
        t = torch.linspace(0, 1, config.max_len)[:, None]
        h = window(t, torch.randn(config.max_len, channels))
        self.h = nn.Parameter(rearrange(h, "l c -> c l").contiguous())

    def forward(self, n: int) -> Tensor:
        _check_len(n, self.max_len)
        return self.h[:, :n]


class S4DFilter(nn.Module):
    """The S4D kernel K̄ (c n) of ``minimodels.ssm.S4D`` as a long filter; the skip
    term is the operator's D, so the SSM's own D is frozen."""

    def __init__(self, channels: int, config: HyenaConfig) -> None:
        super().__init__()
        from minimodels.ssm import S4D  # imported here: only this variant needs it

        self.max_len = config.max_len
        self.ssm = S4D(channels, d_state=config.d_state)
        self.ssm.D.requires_grad_(False)

    def forward(self, n: int) -> Tensor:
        _check_len(n, self.max_len)
        return self.ssm.kernel(n)


def _check_len(n: int, max_len: int) -> None:
    check(0 < n <= max_len, f"sequence length {n} must be in [1, max_len={max_len}]")


_FILTER_CLASSES = {
    "implicit": HyenaFilter,
    "explicit": ExplicitFilter,
    "s4d": S4DFilter,
}


# --- the recurrence (1) and its matrix (2) -----------------------------------------


def hyena_recurrence(
    x: Sequence[Tensor], v: Tensor, h: Tensor, D: Tensor, *, fast: bool = True
) -> Tensor:
    """Eq. (1): x N gates (b d n), v (b d n), h (o d n), D (o d) -> y (b d n).

    ``fast=True`` convolves with ``fft_conv``, else with ``conv_toeplitz``.
    """
    check(len(x) == h.shape[0] == D.shape[0], "x, h and D need one entry per order")
    conv = fft_conv if fast else conv_toeplitz
    for x_i, h_i, D_i in zip(x, h, D):
        v = x_i * conv(v, h_i, D_i)
    return v


def hyena_matrix(x: Sequence[Tensor], h: Tensor, D: Tensor) -> Tensor:
    """Eq. (2): H(u) = D_x^N S^N ... D_x^1 S^1, (b d n n); y = H(u) v."""
    n = h.shape[-1]
    H = torch.eye(n, dtype=h.dtype, device=h.device)
    for x_i, h_i, D_i in zip(x, h, D):
        S = toeplitz(h_i, n) + D_i[:, None, None] * torch.eye(
            n, dtype=h.dtype, device=h.device
        )
        H = x_i[..., None] * (S @ H)  # diag(x) S H: scale row t by x_t
    return H


# --- the operator ------------------------------------------------------------------


class HyenaOperator(nn.Module):
    """The Hyena operator as a sequence mixer, (b n c) -> (b n c).

    in-projection to (N + 1) d, short causal conv, split into x^1..x^N and v,
    the recurrence (1) with N long filters, out-projection. ``options`` are the
    fields of ``HyenaConfig`` (``max_len`` is required), which holds every
    default once; a misspelt one is an error naming it. ``from_config`` builds
    from a ``HyenaConfig``.
    """

    def __init__(self, dim: int, **options: Any) -> None:
        super().__init__()
        config = config_from(HyenaConfig, "HyenaOperator", {"dim": dim, **options})
        self.config, self.dim, self.order = config, dim, config.order
        N = config.order
        self.in_proj = nn.Linear(dim, (N + 1) * dim)
        self.short_conv = ShortConv((N + 1) * dim, config.short_kernel)
        self.filter_fn = _FILTER_CLASSES[config.filter](N * dim, config)
        self.D = nn.Parameter(torch.randn(N, dim))  # safari's filter bias
        self.out_proj = nn.Linear(dim, dim)

    @classmethod
    def from_config(cls, config: HyenaConfig) -> HyenaOperator:
        return cls(**asdict(config))

    def filters(self, n: int) -> Tensor:
        """h^1 .. h^N for length n <= max_len: (o d n). Channels are interleaved
        as in safari, so each h^i has window rates from slowest to fastest."""
        return rearrange(self.filter_fn(n), "(d o) l -> o d l", o=self.order)

    def project(self, u: Tensor) -> tuple[list[Tensor], Tensor]:
        """u (b n c) -> gates x^1..x^N and v, each (b d n)."""
        z = self.short_conv(rearrange(self.in_proj(u), "b n c -> b c n"))
        *x, v = z.split(self.dim, dim=1)
        return x, v

    def _check_input(self, u: Tensor) -> None:
        check_ndim("u", u, 3, "b n c")
        check(u.shape[-1] == self.dim, f"u's last axis must be dim={self.dim}")
        check(
            u.is_floating_point(),
            f"u must be a floating-point tensor (embed token ids first), got {u.dtype}",
        )
        check(u.shape[1] > 0, "u must hold at least one position, got length 0")

    def forward(self, u: Tensor) -> Tensor:  # u: (b n c)
        self._check_input(u)
        x, v = self.project(u)
        h = self.filters(u.shape[1]).to(v.dtype)
        y = hyena_recurrence(x, v, h, self.D.to(v.dtype), fast=self.config.fast)
        return self.out_proj(rearrange(y, "b d n -> b n d"))

    def matrix(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """H(u) (b d n n) of eq. (2) and v (b d n): ``forward`` is out(H(u) v)."""
        self._check_input(u)
        x, v = self.project(u)
        h, D = self.filters(u.shape[1]).to(v.dtype), self.D.to(v.dtype)
        return hyena_matrix(x, h, D), v


def h3_as_hyena(dim: int, *, max_len: int, d_state: int = 64) -> HyenaOperator:
    """H3 as a Hyena operator: order 2 with SSM filters.

    H3 computes y = D_q S_ψ D_k S_φ v (Hyena paper, eq. 4): a long filter φ,
    a gate k, a long filter ψ, a gate q, which is (1) with N = 2, x^1 = k,
    x^2 = q, h^1 = φ, h^2 = ψ. H3's φ is a shift SSM (a short filter) and ψ a
    diagonal SSM; here both are S4D kernels, and Hyena's short convolution on
    the projections plays the shift SSM's part.
    """
    return HyenaOperator(dim, max_len=max_len, order=2, filter="s4d", d_state=d_state)
