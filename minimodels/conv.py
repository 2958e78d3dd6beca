"""Long convolutions: the Toeplitz view and the FFT route.

A causal convolution of a length-n signal u with a filter h,

    y_t = sum_{s=0}^{t} h_{t-s} u_s,                                  (1)

is multiplication by the lower-triangular Toeplitz matrix T[t, s] = h_{t-s}. The
FFT computes it in O(n log n): zero-pad u and h to 2n, multiply their spectra,
transform back and keep the first n outputs (the padding turns the circular
convolution of the DFT into the linear one, so nothing wraps around).

Shapes: b batch, d channels, n sequence length. Signals are (... d n) and filters
(d n) (one filter per channel) or (n,) (shared).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimodels._util import check, check_positive

__all__ = ["fft_conv", "ShortConv"]


def fft_conv(u: Tensor, h: Tensor, D: Tensor | None = None) -> Tensor:
    """Causal convolution of u (... d n) with h (d n) or (n,), plus D * u.

    Computed with real FFTs of size 2n in float32 (or float64) whatever the input
    dtype, and returned in the input's dtype. h may be shorter than n.
    """
    n = u.shape[-1]
    check(h.shape[-1] <= n, f"h (length {h.shape[-1]}) longer than u (length {n})")
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    size = 2 * n
    u_f = torch.fft.rfft(u.to(compute), n=size)
    h_f = torch.fft.rfft(h.to(compute), n=size)
    y = torch.fft.irfft(u_f * h_f, n=size)[..., :n]
    if D is not None:
        y = y + u.to(compute) * D.to(compute)[..., None]
    return y.to(u.dtype)


class ShortConv(nn.Module):
    """Depthwise causal convolution with a short kernel (k = 3 in H3 and Hyena).

    (b d n) -> (b d n); output t sees inputs t-k+1 .. t.
    """

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        check_positive(dim=dim, kernel_size=kernel_size)
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(dim, dim, kernel_size, groups=dim, padding=0)

    def forward(self, x: Tensor) -> Tensor:  # x: (b d n)
        return self.conv(F.pad(x, (self.kernel_size - 1, 0)))
