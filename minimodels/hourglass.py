"""The hourglass: shorten the sequence in the middle of the network, causally.

"Hierarchical Transformers Are More Efficient Language Models" (Nawrot, Tworkowski,
Tyrolski, Kaiser, Wu, Szegedy, Michalewski, 2022, arXiv:2110.13711) shortens the
sequence by a factor k in the middle of the network. To stay causal it shifts the
sequence right by k - 1 before pooling, so that compressed token j summarizes

    z_j = Pool(x_{jk-k+1}, ..., x_{jk})                                    (1)

and, upsampled by repetition (u_t = z_{floor(t/k)}), fine position t >= jk only
sees inputs <= jk. Pooling without the shift, z_j = Pool(x_{jk}, ..., x_{jk+k-1}),
lets position jk see k - 1 future tokens: the leak that ``shift=False`` shows.
``Hourglass`` is the paper's model with one shortening (pre blocks, inner blocks
on the shortened sequence, post blocks), pooled by a learned linear map.
``minimodels.hierarchical`` builds the simple hierarchical transformer on the
same shift.

Shapes: b batch, n fine length, m compressed length (n / k), c channels,
k factor, v vocabulary.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from minimodels._util import check, check_divides, check_int, check_ndim, check_positive
from minimodels.attention import MultiHeadAttention
from minimodels.lm import Block, Shell

__all__ = [
    "check_ids",
    "shift_right",
    "upsample",
    "Shorten",
    "Hourglass",
]


def check_ids(ids: Tensor) -> None:
    """ids must be a non-empty (b n) batch of integer tokens (errors say which)."""
    check_ndim("ids", ids, 2, "b n")
    check(not ids.is_floating_point(), f"ids must be integer tokens, got {ids.dtype}")
    check(ids.shape[1] > 0, "ids is an empty sequence (n = 0)")


def shift_right(x: Tensor, amount: int) -> Tensor:
    """(b n c) -> (b n c): x_{t - amount} at position t, zeros before the start."""
    if amount == 0:
        return x
    return F.pad(x, (0, 0, amount, 0))[:, : x.shape[1]]


def upsample(z: Tensor, factor: int, length: int | None = None) -> Tensor:
    """(b m c) -> (b n c): repeat each token ``factor`` times, cut to ``length``."""
    out = repeat(z, "b m c -> b (m k) c", k=factor)
    return out if length is None else out[:, :length]


class Shorten(nn.Module):
    """Linear pooling of k tokens into one, (b n c) -> (b n/k c), after the
    hourglass shift by k - 1 (eq. 1); ``shift=False`` is the leaking version."""

    def __init__(self, dim: int, factor: int, *, shift: bool = True) -> None:
        super().__init__()
        check_int(dim=dim, factor=factor)
        check_positive(dim=dim, factor=factor)
        self.factor, self.shift = factor, shift
        self.proj = nn.Linear(factor * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        k = self.factor
        check_divides("factor", k, "sequence length", x.shape[1])
        if self.shift:
            x = shift_right(x, k - 1)
        return self.proj(rearrange(x, "b (m k) c -> b m (k c)", k=k))


class Hourglass(Shell):
    """Hourglass LM: ``depth = (pre, inner, post)`` attention blocks; the inner
    ones run on the sequence shortened by ``factor``, whose upsampled output is
    added to the residual stream. Inputs of any length are right-padded (the
    padding lies in everyone's future) and the logits cut back."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        *,
        factor: int = 4,
        depth: tuple[int, int, int] = (1, 2, 1),
        heads: int = 4,
        shift: bool = True,
    ) -> None:
        check_int(vocab_size=vocab_size, dim=dim, factor=factor, heads=heads)
        check_positive(vocab_size=vocab_size, dim=dim, factor=factor, heads=heads)
        check(len(depth) == 3 and min(depth) >= 0, f"depth must be 3 counts: {depth}")
        check_int(**{f"depth[{i}]": d for i, d in enumerate(depth)})
        super().__init__(vocab_size, dim)
        self.factor = factor

        def blocks(count: int) -> nn.ModuleList:
            return nn.ModuleList(
                Block(dim, MultiHeadAttention(dim, heads=heads)) for _ in range(count)
            )

        def build() -> None:
            self.pre, self.inner, self.post = (blocks(d) for d in depth)
            self.shorten = Shorten(dim, factor, shift=shift)

        self.draw_in_order(build)

    def forward(self, ids: Tensor) -> Tensor:  # ids: (b n) -> logits (b n v)
        check_ids(ids)
        n = ids.shape[1]
        x = self.embed(F.pad(ids, (0, (-n) % self.factor)))
        for block in self.pre:
            x = block(x)
        z = self.shorten(x)  # (b m c), m = n / k
        for block in self.inner:
            z = block(z)
        x = x + upsample(z, self.factor)
        for block in self.post:
            x = block(x)
        return self.logits(x)[:, :n]
