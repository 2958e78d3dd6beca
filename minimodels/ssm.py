"""Diagonal state space models: S4D as a convolution and as a recurrence.

"On the Parameterization and Initialization of Diagonal State Space Models"
(Gu, Gupta, Goel, Ré, 2022, arXiv:2206.11893), following "The Annotated S4"
(Rush & Karamcheti, 2022) and the S4D code of the state-spaces repository.

One independent SSM per channel (d of them), with a diagonal complex state matrix:

    x'(t) = A x(t) + B u(t),    y(t) = C x(t) + D u(t),    A = diag(A_1..A_N).  (1)

Discretized with a step Δ (learned, one per channel):

    zero-order hold:  Ā = exp(ΔA),               B̄ = (exp(ΔA) - 1) / A · B     (2)
    bilinear:         Ā = (1 + ΔA/2)/(1 - ΔA/2),  B̄ = Δ B / (1 - ΔA/2)          (3)

The recurrence and the convolution it unrolls to (K̄ is the SSM kernel):

    x_k = Ā x_{k-1} + B̄ u_k,    y_k = 2 Re(C x_k) + D u_k                      (4)
    y = K̄ * u + D u,            K̄_l = 2 Re( sum_n C_n B̄_n Ā_n^l )             (5)

(5) is a Vandermonde product, K̄ = 2 Re((C ∘ B̄) V) with V[n, l] = Ā_n^l
= exp(l log Ā_n): one matrix product, no loop over powers. A real SSM's complex
modes come in conjugate pairs; only one of each pair is stored and "2 Re" adds the
other, so a state size N (``d_state``) stores N/2 complex modes.

Initializations, A_n = -1/2 + i·ω_n (n = 0 .. N/2 - 1)::

    S4D-Lin: ω_n = π n;    S4D-Inv: ω_n = (N/π) (N/(2n+1) - 1).

log Δ ~ U[log Δ_min, log Δ_max], B = 1, C ~ CN(0, 1), D ~ N(0, 1). Re A stays
negative (A = -exp(log_A_real) + i A_imag). A, B and Δ train at lr 1e-3 with no
weight decay (declared with ``minimodels.optim.set_optim``, honoured by
``minimodels.train``). ``S4DConfig`` lists S4D's options and their defaults once;
``S4D`` and ``S4DMixer`` are built from it.

Shapes: b batch, n sequence, d channels (model dim), s stored modes (N/2), l lag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from minimodels._util import check, check_ndim, check_positive, config_from
from minimodels.conv import fft_conv
from minimodels.optim import set_optim

__all__ = [
    "discretize_zoh",
    "discretize_bilinear",
    "ssm_kernel",
    "ssm_kernel_naive",
    "ssm_scan",
    "s4d_init",
    "S4DConfig",
    "S4D",
    "S4DMixer",
]

DISCRETIZATIONS = ("zoh", "bilinear")
INITS = ("inv", "lin", "random")
REAL_DTYPES = (torch.float32, torch.float64)


def _check_input(name: str, u: Tensor, layout: str, ndim: int) -> None:
    """A floating (b n d) or (b d) input with at least one position."""
    check_ndim(name, u, ndim, layout)
    check(
        u.is_floating_point(),
        f"{name} must be a floating-point tensor, got {u.dtype} (integer inputs "
        "would be truncated)",
    )
    if ndim == 3:
        check(u.shape[1] >= 1, f"{name} must hold at least one position, got "
                               f"shape {tuple(u.shape)}")  # fmt: skip


def _check_diag(A: Tensor, B: Tensor, dt: Tensor) -> None:
    check(A.is_complex(), f"A must be complex (the diagonal of A), got {A.dtype}")
    check(
        A.dtype in (torch.complex64, torch.complex128),
        f"A must be complex64 or complex128, got {A.dtype} (complex half has no "
        "exp or FFT here)",
    )
    check(A.shape == B.shape, f"A {tuple(A.shape)} and B {tuple(B.shape)} differ")
    check(not dt.is_complex(), "dt must be real")
    check(
        dt.ndim == 0 or dt.shape == A.shape[:-1],
        f"dt must be a scalar or have shape {tuple(A.shape[:-1])}, got "
        f"{tuple(dt.shape)}",
    )


def _dt(dt: Tensor) -> Tensor:  # (d,) -> (d 1) so that it scales every mode
    return dt[..., None] if dt.ndim else dt


def discretize_zoh(A: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order hold, eq. (2): A, B (d s) complex, dt (d,) -> Ā, B̄ (d s)."""
    _check_diag(A, B, dt)
    A_bar = torch.exp(_dt(dt) * A)
    return A_bar, (A_bar - 1) / A * B


def discretize_bilinear(A: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear (Tustin), eq. (3): A, B (d s) complex, dt (d,) -> Ā, B̄ (d s)."""
    _check_diag(A, B, dt)
    half = _dt(dt) * A / 2
    return (1 + half) / (1 - half), _dt(dt) * B / (1 - half)


def _discretize(
    A: Tensor, B: Tensor, dt: Tensor, discretization: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Ā, B̄ and log Ā (exactly ΔA for ZOH, so no log is taken there)."""
    check(
        discretization in DISCRETIZATIONS,
        f"discretization must be one of {DISCRETIZATIONS}, got {discretization!r}",
    )
    if discretization == "zoh":
        A_bar, B_bar = discretize_zoh(A, B, dt)
        return A_bar, B_bar, _dt(dt) * A
    A_bar, B_bar = discretize_bilinear(A, B, dt)
    return A_bar, B_bar, torch.log(A_bar)


def _check_kernel_args(C: Tensor, A: Tensor, L: int) -> None:
    check(C.shape == A.shape, f"C {tuple(C.shape)} and A {tuple(A.shape)} differ")
    check(isinstance(L, int) and L > 0, f"L must be a positive int, got {L!r}")


def ssm_kernel(
    A: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int, *, discretization: str = "zoh"
) -> Tensor:
    """The SSM kernel K̄ (d L), eq. (5), as one Vandermonde product.

    A, B, C: (d s) complex, one mode of each conjugate pair; dt: (d,) real.
    """
    _check_kernel_args(C, A, L)
    _, B_bar, log_A_bar = _discretize(A, B, dt, discretization)
    lags = torch.arange(L, device=A.device, dtype=log_A_bar.real.dtype)
    V = torch.exp(log_A_bar[..., None] * lags)  # (d s l): V[n, l] = Ā_n^l
    return 2 * torch.einsum("ds,dsl->dl", C * B_bar, V).real


def ssm_kernel_naive(
    A: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int, *, discretization: str = "zoh"
) -> Tensor:
    """Reference for ``ssm_kernel``: K̄_l = 2 Re(C Ā^l B̄) with Ā^l built by a loop."""
    _check_kernel_args(C, A, L)
    A_bar, B_bar, _ = _discretize(A, B, dt, discretization)
    power, taps = torch.ones_like(A_bar), []
    for _ in range(L):
        taps.append(2 * (C * power * B_bar).sum(-1).real)
        power = power * A_bar
    return torch.stack(taps, dim=-1)


def ssm_scan(
    A_bar: Tensor, B_bar: Tensor, C: Tensor, u: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Recurrent mode, eq. (4) without D: u (b n d) -> y (b n d), last state (b d s).

    A_bar, B_bar, C: (d s) complex; ``state`` (b d s) continues an earlier scan.
    """
    _check_input("u", u, "b n d", 3)
    check(u.shape[-1] == A_bar.shape[0], "u's last axis must match A's channels")
    if state is None:
        state = u.new_zeros(u.shape[0], *A_bar.shape, dtype=A_bar.dtype)
    ys = []
    for u_k in u.unbind(1):
        state = A_bar * state + B_bar * u_k[..., None]
        ys.append(2 * (C * state).sum(-1).real)
    return torch.stack(ys, dim=1).to(u.dtype), state


def _check_init(init: str, d_state: int) -> None:
    check(init in INITS, f"init must be one of {INITS}, got {init!r}")
    check(d_state >= 2 and d_state % 2 == 0, f"d_state must be even, got {d_state}")


def s4d_init(
    init: str, d_state: int, channels: int | None = None
) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts of A, each (s,), s = d_state // 2, or (channels, s).

    Re A = -1/2 always. Im A: S4D-Lin pi n, S4D-Inv N/pi (N/(2n+1) - 1), and
    ``"random"`` pi (N/2) u with u ~ U[0, 1) drawn per channel from torch's global
    generator: S4D-Lin's range of frequencies at random places (the S4 code's
    ``dplr(init="lin", imag_random=True)``).
    """
    _check_init(init, d_state)
    N, s = d_state, d_state // 2
    n = torch.arange(s, dtype=torch.float64).expand(channels or 1, s)
    if init == "random":
        imag = math.pi * N / 2 * torch.rand(n.shape, dtype=torch.float64)
    elif init == "lin":
        imag = math.pi * n
    else:
        imag = N / math.pi * (N / (2 * n + 1) - 1)
    real, imag = torch.full_like(imag, -0.5).float(), imag.float()
    return (real, imag) if channels else (real[0], imag[0])


@dataclass(frozen=True)
class S4DConfig:
    """Every option of ``S4D`` but its width, once; the defaults are the S4D code's."""

    d_state: int = 64  # N: the state size (N/2 complex modes are stored)
    dt_min: float = 1e-3  # log Δ is drawn uniformly in [log dt_min, log dt_max]
    dt_max: float = 1e-1
    init: str = "inv"  # S4D-Inv, S4D-Lin or random imaginary parts (INITS)
    discretization: str = "zoh"  # zero-order hold or bilinear (DISCRETIZATIONS)
    bidirectional: bool = False  # add an anti-causal kernel with its own C
    lr: float = 1e-3  # of A, B and Δ, with no weight decay

    def __post_init__(self) -> None:
        check_positive(dt_min=self.dt_min, dt_max=self.dt_max, lr=self.lr)
        check(
            self.dt_min <= self.dt_max,
            f"dt_min ({self.dt_min}) must be <= dt_max ({self.dt_max})",
        )
        _check_init(self.init, self.d_state)
        check(
            self.discretization in DISCRETIZATIONS,
            f"discretization must be one of {DISCRETIZATIONS}, "
            f"got {self.discretization!r}",
        )


class S4D(nn.Module):
    """S4D layer: d independent diagonal SSMs, (b n d) -> (b n d), y = K̄ * u + D u.

    ``options`` are the fields of ``S4DConfig``. ``forward`` runs in convolution
    mode (FFT); ``step``/``scan`` in recurrent mode. ``bidirectional=True`` adds
    an anti-causal kernel with its own C (the S4 code's convention); it has no
    recurrent mode.
    """

    def __init__(self, d_model: int, **options: Any) -> None:
        super().__init__()
        check_positive(d_model=d_model)
        config = self.config = config_from(S4DConfig, "S4D", options)
        d_state, channels = config.d_state, 2 if config.bidirectional else 1
        A_real, A_imag = s4d_init(config.init, d_state, channels=d_model)  # (d s)
        self.d_model, self.d_state, self.init = d_model, d_state, config.init
        self.discretization = config.discretization
        self.bidirectional = config.bidirectional
        lo, hi = math.log(config.dt_min), math.log(config.dt_max)
        s = d_state // 2
        C = torch.randn(channels, d_model, s, dtype=torch.cfloat)
        self.log_dt = nn.Parameter(torch.rand(d_model) * (hi - lo) + lo)
        self.log_A_real = nn.Parameter((-A_real).log())
        self.A_imag = nn.Parameter(A_imag)
        self.B = nn.Parameter(torch.view_as_real(torch.ones(d_model, s, dtype=C.dtype)))
        self.C = nn.Parameter(torch.view_as_real(C))  # (c d s 2), c = 1 or 2
        self.D = nn.Parameter(torch.randn(d_model))
        set_optim(self, ["log_dt", "log_A_real", "A_imag", "B"], lr=config.lr)

    # --- the parameters in the paper's notation -------------------------------
    def _check_dtype(self) -> None:
        check(
            self.D.dtype in REAL_DTYPES,
            f"S4D's parameters must be float32 or float64, got {self.D.dtype}: its "
            "kernel is computed in complex arithmetic, which has no float16/bfloat16 "
            "form here (keep the layer in float32 and feed it half inputs, or use "
            "torch.autocast)",
        )

    @property
    def A(self) -> Tensor:  # (d s) complex, Re A < 0
        self._check_dtype()
        return torch.complex(-torch.exp(self.log_A_real), self.A_imag)

    @property
    def dt(self) -> Tensor:  # (d,)
        return torch.exp(self.log_dt)

    def _C(self, backward: bool = False) -> Tensor:  # (d s) complex
        check(not backward or self.bidirectional, "backward kernel needs bidirectional")
        return torch.view_as_complex(self.C[int(backward)])

    def discrete(self) -> tuple[Tensor, Tensor]:
        """Ā, B̄ (d s) for this layer's discretization."""
        self._check_dtype()
        A_bar, B_bar, _ = _discretize(
            self.A, torch.view_as_complex(self.B), self.dt, self.discretization
        )
        return A_bar, B_bar

    def kernel(self, L: int, *, backward: bool = False) -> Tensor:
        """K̄ (d L); ``backward=True`` gives the anti-causal one (bidirectional)."""
        self._check_dtype()
        B = torch.view_as_complex(self.B)
        C = self._C(backward)
        return ssm_kernel(self.A, B, C, self.dt, L, discretization=self.discretization)

    # --- convolution mode --------------------------------------------------------
    def forward(self, u: Tensor) -> Tensor:  # u: (b n d) -> (b n d)
        _check_input("u", u, "b n d", 3)
        check(u.shape[-1] == self.d_model, f"u's last axis must be {self.d_model}")
        L = u.shape[1]
        u_t = rearrange(u, "b n d -> b d n")
        y = fft_conv(u_t, self.kernel(L), self.D)
        if self.bidirectional:
            # y_t += sum_{s > t} K_back[s - t - 1] u_s: a causal conv on the flipped
            # sequence with the kernel delayed by one step (as in the S4 code).
            k_back = F.pad(self.kernel(L, backward=True), (1, 0))[:, :L]
            y = y + fft_conv(u_t.flip(-1), k_back).flip(-1)
        return rearrange(y, "b d n -> b n d")

    # --- recurrent mode ------------------------------------------------------------
    def init_state(self, batch: int) -> Tensor:
        """Zero state x_0: (b d s) complex."""
        check_positive(batch=batch)
        dtype = torch.complex128 if self.D.dtype == torch.float64 else torch.complex64
        s = self.d_state // 2
        return torch.zeros(batch, self.d_model, s, dtype=dtype, device=self.D.device)

    def step(self, u_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One step of eq. (4): u_t (b d), state (b d s) -> y_t (b d), new state."""
        check(not self.bidirectional, "a bidirectional S4D has no recurrent mode")
        _check_input("u_t", u_t, "b d", 2)
        A_bar, B_bar = self.discrete()
        state = A_bar * state + B_bar * u_t[..., None]
        y = 2 * (self._C() * state).sum(-1).real + self.D * u_t
        return y.to(u_t.dtype), state

    def scan(self, u: Tensor, state: Tensor | None = None) -> Tensor:
        """Recurrent mode over a whole sequence: u (b n d) -> (b n d) == forward(u)."""
        check(not self.bidirectional, "a bidirectional S4D has no recurrent mode")
        _check_input("u", u, "b n d", 3)
        A_bar, B_bar = self.discrete()
        y, _ = ssm_scan(A_bar, B_bar, self._C(), u, state)
        return y + u * self.D


class S4DMixer(nn.Module):
    """S4D as an LM sequence mixer: S4D -> GELU -> Linear(d, 2d) -> GLU, the block
    of the S4D reference code (``glu=False``: GELU -> Linear(d, d)). ``options``
    go to ``S4D`` (the fields of ``S4DConfig``); a mixer is causal, so not
    ``bidirectional``."""

    def __init__(self, dim: int, *, glu: bool = True, **options: Any) -> None:
        super().__init__()
        check(
            not options.get("bidirectional"),
            "bidirectional must be False in S4DMixer: an LM mixer is causal",
        )
        self.ssm = S4D(dim, **options)
        self.glu = glu
        self.out = nn.Linear(dim, 2 * dim if glu else dim)

    def _project(self, y: Tensor) -> Tensor:
        y = self.out(F.gelu(y))
        return F.glu(y, dim=-1) if self.glu else y

    def forward(self, x: Tensor) -> Tensor:  # x: (b n c)
        return self._project(self.ssm(x))

    def init_state(self, batch: int) -> Tensor:
        return self.ssm.init_state(batch)

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        y, state = self.ssm.step(x, state)
        return self._project(y), state
