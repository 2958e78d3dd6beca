"""H3: a state-space layer that can remember a token and compare against it later.

"Hungry Hungry Hippos: Towards Language Modeling with State Space Models"
(Fu, Dao, Saab, Thomas, Rudra, Re, ICLR 2023, arXiv:2212.14052), Section 3.

From the input u three projections, q = u W_q, k = u W_k, v = u W_v, and

    k'  = SSM_shift(k)       A = shift matrix; B (init e_1), C, D learned    (1)
    z   = k' (x) v           per head of size d: the outer product k'_t v_t^T (2)
    s   = SSM_diag(z)        diagonal SSM (S4D), one kernel per head          (3)
    y   = q . s              per head: y_t = q_t^T s_t, a d-vector            (4)
    out = y W_o

The shift SSM's state x_t = S x_{t-1} + B k_t (S shifts down by one place) holds,
with B = e_1, the last m inputs, so SSM_shift is a causal convolution with the
m-tap filter phi_l = C S^l B = sum_i B_i C_{i+l} (= C_l for B = e_1; + D at lag 0):
it can hand the *previous* token to the current position. B trains, initialised
to e_1, as in the authors' code (``SSKernelShift``; the paper fixes B = e_1).
The diagonal SSM, with filter psi, keeps a running (decaying) sum over the whole
sequence: a memory of every (previous token, current token) pair seen so far.
Gating by q reads from that memory the pairs whose k' matches q. Its kernel is
discretized with the bilinear transform by default, as the authors' code does
(``SSKernelDiag(disc='bilinear')``, which H3's configs never override);
``discretization="zoh"`` gives S4D's zero-order hold.

With head dim 1, D_x the diagonal matrix of a sequence x and S_h the
lower-triangular Toeplitz matrix of a filter h, (1)-(4) are

    y = D_q S_psi D_{k'} v,  k' = S_phi k,  so  y = D_q S_psi D_v S_phi k,     (5)

the form A(q, k) v = D_q S_psi D_k S_phi v of the Hyena paper (Poli et al., 2023,
arXiv:2302.10866) with the roles of k and v swapped (both are projections of u;
H3's code shifts k, as here).

Training runs (1)-(4) as FFT convolutions (``fft_conv``), O(n log n); generation
runs them as recurrences (``init_state`` / ``step``), O(1) work per token.

Shapes: b batch, n sequence, c model dim (= h * d), h heads, d head dim,
m shift-SSM size (its number of taps), i/j the two axes of a head's k' v^T.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from minimodels._util import check, check_divides, check_ndim, check_positive
from minimodels.conv import fft_conv, toeplitz
from minimodels.optim import set_optim
from minimodels.ssm import S4D

__all__ = [
    "ShiftSSM",
    "H3",
    "h3_conv",
    "h3_reference",
    "h3_matrix",
]

REAL_DTYPES = (torch.float32, torch.float64)
ShiftState = Tensor  # (b c m): the last m inputs, newest first
H3State = tuple[Tensor, Tensor]  # (shift state, S4D state)


class ShiftSSM(nn.Module):
    """The SSM with A = shift matrix and learned B, C, D: (b c n) -> (b c n).

    Its kernel phi_l = sum_i B_i C_{i+l} (+ D at l = 0) has m taps, so it is a
    depthwise causal convolution: with B = e_1 (its init) phi = C, and it is
    ``minimodels.conv.ShortConv`` without a bias (tested). ``trainable_B=False``
    keeps B = e_1 fixed, as the paper writes it.
    """

    def __init__(self, channels: int, size: int, *, trainable_B: bool = True) -> None:
        super().__init__()
        check_positive(channels=channels, size=size)
        self.size = size
        # as in H3's code: B = e_1, C like a Conv1d weight, D standard normal
        B = torch.zeros(channels, size)
        B[:, 0] = 1.0
        if trainable_B:
            self.B = nn.Parameter(B)
            set_optim(self, ["B"], weight_decay=0.0)  # as SSKernelShift registers it
        else:
            self.register_buffer("B", B)
        self.C = nn.Parameter(torch.empty(channels, size))
        nn.init.kaiming_uniform_(self.C, a=math.sqrt(5))
        self.D = nn.Parameter(torch.randn(channels))

    def kernel(self) -> Tensor:  # (c m): phi_0 .. phi_{m-1}
        m = self.size
        # windows[c, l, i] = C[c, i + l] (0 past the end): phi_l = sum_i B_i C_{i+l}
        windows = F.pad(self.C, (0, m - 1)).unfold(-1, m, 1)  # (c m m)
        phi = torch.einsum("cli,ci->cl", windows, self.B)
        return torch.cat((phi[:, :1] + self.D[:, None], phi[:, 1:]), dim=1)

    def forward(self, u: Tensor) -> Tensor:  # u: (b c n)
        phi = self.kernel()
        weight = rearrange(phi.flip(-1), "c m -> c 1 m")  # conv1d correlates
        return F.conv1d(F.pad(u, (self.size - 1, 0)), weight, groups=u.shape[1])

    def init_state(self, batch: int) -> ShiftState:
        return self.C.new_zeros(batch, self.C.shape[0], self.size)

    def step(self, u: Tensor, state: ShiftState) -> tuple[Tensor, ShiftState]:
        """u: (b c) -> (b c); x_t = S x_{t-1} + B u_t, y_t = C x_t + D u_t."""
        state = F.pad(state[..., :-1], (1, 0)) + self.B * u[..., None]
        return (state * self.C).sum(-1) + self.D * u, state


def _fast_len(n: int) -> int:
    """The smallest m >= n with no prime factor above 5: FFTs of such sizes are
    fast, while a prime n (e.g. 31) can be several times slower."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _check_real(name: str, t: Tensor) -> None:
    check(
        t.dtype in REAL_DTYPES,
        f"{name} must be float32 or float64, got {t.dtype}: H3's convolutions run "
        "in complex arithmetic, which has no float16/bfloat16 form here (use "
        "torch.autocast, under which H3 convolves in float32)",
    )


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, head_dim: int) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_ndim(name, t, 3, "b c n")
        _check_real(name, t)
    check(q.shape == k.shape == v.shape, "q, k, v must have the same shape")
    check_divides("head_dim", head_dim, "channels", q.shape[1])


def h3_conv(
    q: Tensor, k: Tensor, v: Tensor, phi: Tensor, psi: Tensor, D: Tensor, head_dim: int
) -> Tensor:
    """Equations (1)-(4) with FFT convolutions; q, k, v: (b c n) -> (b c n).

    phi: (c m) shift filter, psi: (h n) diagonal-SSM kernels, D: (h,) its skip.
    """
    _check_qkv(q, k, v, head_dim)
    n = q.shape[-1]
    # zeros appended at the end change nothing before them (causality)
    q, k, v = (F.pad(x, (0, _fast_len(n) - n)) for x in (q, k, v))
    k = fft_conv(k, phi)  # (1)
    k = rearrange(k, "b (h i) n -> b i 1 h n", i=head_dim)
    v = rearrange(v, "b (h j) n -> b 1 j h n", j=head_dim)
    s = fft_conv(k * v, psi, D)  # (2), (3): (b i j h n)
    q = rearrange(q, "b (h i) n -> b i 1 h n", i=head_dim)
    y = (q * s).sum(1)  # (4): (b j h n)
    return rearrange(y, "b j h n -> b (h j) n")[..., :n]


def h3_reference(
    q: Tensor, k: Tensor, v: Tensor, phi: Tensor, psi: Tensor, D: Tensor, head_dim: int
) -> Tensor:
    """The same as ``h3_conv`` with explicit Toeplitz matrices and einsums."""
    _check_qkv(q, k, v, head_dim)
    n, d = q.shape[-1], head_dim
    k = torch.einsum("cts,bcs->bct", toeplitz(phi, n), k)
    q, k, v = (rearrange(x, "b (h d) n -> b h d n", d=d) for x in (q, k, v))
    z = torch.einsum("bhin,bhjn->bhijn", k, v)
    s = torch.einsum("hts,bhijs->bhijt", toeplitz(psi, n), z)
    s = s + D[:, None, None, None] * z
    return rearrange(torch.einsum("bhin,bhijn->bhjn", q, s), "b h j n -> b (h j) n")


def h3_matrix(q: Tensor, k: Tensor, phi: Tensor, psi: Tensor, D: Tensor) -> Tensor:
    """H3's data-dependent "attention matrix" for head dim 1: y = M v with
    M = D_q S_psi D_{S_phi k} (eq. 5), M[t, s] = q_t (psi_{t-s} + D [t=s]) k'_s.

    q, k: (b c n), phi: (c m), psi and D: per channel -> M: (b c n n).
    """
    for name, t in (("q", q), ("k", k)):
        check_ndim(name, t, 3, "b c n")
        _check_real(name, t)
    n = q.shape[-1]
    k = torch.einsum("cts,bcs->bct", toeplitz(phi, n), k)
    eye = torch.eye(n, dtype=psi.dtype, device=psi.device)
    S_psi = toeplitz(psi, n) + D[:, None, None] * eye
    return q[..., :, None] * S_psi * k[..., None, :]


class H3(nn.Module):
    """The H3 sequence mixer: (b n c) -> (b n c), eq. (1)-(4).

    ``head_dim`` = 1 is the paper's default (elementwise gates); larger heads use
    the outer product k' v^T, a d x d state per head, as in H3's multi-head form.
    ``shift_size`` is the shift SSM's state size (default ``d_state``, as in H3's
    code). The diagonal SSM is ``minimodels.ssm.S4D`` with one channel per head
    (its kernel psi and skip D are shared by the d x d entries of a head),
    discretized by ``discretization`` ("bilinear", the authors' default, or
    "zoh"). Inputs and parameters are float32 or float64; under autocast the
    projections run in the low precision and the convolutions in float32.
    """

    def __init__(
        self,
        dim: int,
        *,
        d_state: int = 64,
        head_dim: int = 1,
        shift_size: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        init: str = "lin",
        discretization: str = "bilinear",
        trainable_shift_B: bool = True,
    ) -> None:
        super().__init__()
        check_positive(dim=dim, d_state=d_state, head_dim=head_dim)
        check_divides("head_dim", head_dim, "dim", dim)
        check(shift_size is None or shift_size > 0, "shift_size must be positive")
        self.dim, self.head_dim, self.heads = dim, head_dim, dim // head_dim
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.shift = ShiftSSM(dim, shift_size or d_state, trainable_B=trainable_shift_B)
        self.ssm = S4D(
            self.heads,
            d_state=d_state,
            dt_min=dt_min,
            dt_max=dt_max,
            init=init,
            discretization=discretization,
        )
        self.to_out = nn.Linear(dim, dim)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.to_qkv(x).chunk(3, dim=-1)

    def _check_input(self, x: Tensor, layout: str) -> None:
        check_ndim("x", x, len(layout.split()), layout)
        check(x.shape[-1] == self.dim, f"x must have {self.dim} channels")
        _check_real("H3's parameters", self.ssm.D)  # e.g. after .half()
        _check_real("x", x)

    def kernels(self, n: int) -> tuple[Tensor, Tensor]:
        """The two SSMs' kernels at length n: the shift filter phi (c, min(m, n))
        (its lag 0 includes the shift SSM's D) and the diagonal SSM's psi (h, n)
        (without its skip ``self.ssm.D``)."""
        return self.shift.kernel()[:, :n], self.ssm.kernel(n)

    def forward(self, x: Tensor) -> Tensor:  # x: (b n c)
        self._check_input(x, "b n c")
        compute = self.ssm.D.dtype  # float32 even when autocast gives bf16 q, k, v
        q, k, v = (rearrange(t, "b n c -> b c n").to(compute) for t in self._qkv(x))
        phi, psi = self.kernels(x.shape[1])
        y = h3_conv(q, k, v, phi, psi, self.ssm.D, self.head_dim)
        return self.to_out(rearrange(y, "b c n -> b n c"))

    def matrix(self, x: Tensor) -> Tensor:
        """The layer's data-controlled matrix on x, per head: (b n c) -> (b h n n).

        M[t, s] = (psi_{t-s} + D [t = s]) q_t . k'_s, the dot product over the
        head's d channels, so that head h outputs y_t = sum_s M[t, s] v_s before
        ``to_out`` (eq. 5 summed over a head; ``h3_matrix`` for head dim 1).
        """
        self._check_input(x, "b n c")
        compute = self.ssm.D.dtype
        q, k, _ = (rearrange(t, "b n c -> b c n").to(compute) for t in self._qkv(x))
        phi, psi = self.kernels(x.shape[1])
        d = self.head_dim
        per_channel = h3_matrix(
            q, k, phi, psi.repeat_interleave(d, 0), self.ssm.D.repeat_interleave(d)
        )
        return rearrange(per_channel, "b (h d) t s -> b h d t s", d=d).sum(2)

    def init_state(self, batch: int) -> H3State:
        d = self.head_dim
        return self.shift.init_state(batch), self.ssm.init_state(batch * d * d)

    def step(self, x: Tensor, state: H3State) -> tuple[Tensor, H3State]:
        """One token x: (b c) -> (b c), advancing both SSMs' states."""
        self._check_input(x, "b c")
        shift_state, ssm_state = state
        q, k, v = self._qkv(x)
        k, shift_state = self.shift.step(k, shift_state)
        d = self.head_dim
        z = rearrange(k, "b (h i) -> b i 1 h", i=d) * rearrange(
            v, "b (h j) -> b 1 j h", j=d
        )  # (b i j h)
        s, ssm_state = self.ssm.step(rearrange(z, "b i j h -> (b i j) h"), ssm_state)
        s = rearrange(s, "(b i j) h -> b i j h", i=d, j=d)  # S4D.step adds D z
        y = (rearrange(q, "b (h i) -> b i 1 h", i=d) * s).sum(1)  # (b j h)
        return self.to_out(rearrange(y, "b j h -> b (h j)")), (shift_state, ssm_state)
