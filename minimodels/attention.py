"""Softmax attention: the reference every long-context model is measured against.

"Attention Is All You Need" (Vaswani et al., 2017, arXiv:1706.03762):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + M) V,

with M = -inf above the diagonal when the attention is causal. Queries and keys may
have different lengths; the causal mask is then aligned to the *end* of the keys
(query i sees keys j <= i + n_k - n_q), as in FlashAttention-2 and KV-cache decoding.
A query row that sees no key at all returns zeros.

Rotary position embeddings: "RoFormer" (Su et al., 2021, arXiv:2104.09864).

Shapes: b batch, h heads, n query length, m key length, d head dim, c model dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from minimodels._util import check, check_divides, check_ndim, default

__all__ = [
    "attention_naive",
    "attention_sdpa",
    "causal_mask",
    "MultiHeadAttention",
    "RotaryEmbedding",
]


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_ndim(name, t, 4, "b h n d")
    check(
        q.shape[:2] == k.shape[:2] == v.shape[:2],
        f"q, k, v must share batch and heads, got {tuple(q.shape)}, "
        f"{tuple(k.shape)}, {tuple(v.shape)}",
    )
    check(k.shape[2] == v.shape[2], "k and v must have the same length")
    check(q.shape[-1] == k.shape[-1], "q and k must have the same head dim")
    check(q.dtype == k.dtype == v.dtype, "q, k, v must have the same dtype")


def causal_mask(n: int, m: int, device: torch.device | None = None) -> Tensor:
    """(n, m) boolean mask, True where query i may see key j (end-aligned)."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(m, device=device)[None, :]
    return j <= i + (m - n)


def attention_naive(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None
) -> Tensor:
    """Plain attention that materializes the (n, m) score matrix.

    q: (b h n d), k and v: (b h m d) -> (b h n d).
    """
    _check_qkv(q, k, v)
    scale = default(scale, 1.0 / math.sqrt(q.shape[-1]))
    s = torch.einsum("bhnd,bhmd->bhnm", q, k) * scale
    if causal:
        mask = causal_mask(q.shape[2], k.shape[2], q.device)
        s = s.masked_fill(~mask, float("-inf"))
    low_precision = q.dtype in (torch.float16, torch.bfloat16)
    p = torch.softmax(s, dim=-1, dtype=torch.float32 if low_precision else None)
    p = p.to(q.dtype)
    if causal and q.shape[2] > k.shape[2]:
        p = p.nan_to_num(0.0)  # rows with no visible key: softmax of all -inf
    return torch.einsum("bhnm,bhmd->bhnd", p, v)


def attention_sdpa(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None
) -> Tensor:
    """The same attention through ``F.scaled_dot_product_attention`` (fused kernels).

    SDPA's ``is_causal`` aligns the mask to the *start*; for n != m we pass our
    end-aligned mask explicitly so both functions compute the same thing.
    """
    _check_qkv(q, k, v)
    n, m = q.shape[2], k.shape[2]
    if not causal or n == m:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    mask = causal_mask(n, m, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.masked_fill(~mask.any(-1)[:, None], 0.0)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding: rotate pairs of channels by position * frequency."""

    inv_freq: Tensor

    def __init__(self, dim_head: int, base: float = 10_000.0) -> None:
        super().__init__()
        check(dim_head % 2 == 0, f"dim_head must be even for rotary, got {dim_head}")
        inv_freq = base ** (-torch.arange(0, dim_head, 2).float() / dim_head)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:  # x: (b h n d)
        pos = torch.arange(offset, offset + x.shape[-2], device=x.device)
        angles = pos[:, None].float() * self.inv_freq[None, :]  # (n d/2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return rotated.flatten(-2)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention as a sequence mixer: (b n c) -> (b n c).

    ``fast=True`` runs SDPA, ``fast=False`` the naive reference; both give the same
    answer (tested). ``step`` decodes one token at a time with a key/value cache.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 4,
        dim_head: int | None = None,
        causal: bool = True,
        rotary: bool = True,
        fast: bool = True,
    ) -> None:
        super().__init__()
        if dim_head is None:
            check_divides("heads", heads, "dim", dim)
        self.heads = heads
        self.dim_head = default(dim_head, dim // max(heads, 1))
        self.causal, self.fast = causal, fast
        inner = heads * self.dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.rotary = RotaryEmbedding(self.dim_head) if rotary else None

    def _qkv(self, x: Tensor, offset: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        qkv = rearrange(self.to_qkv(x), "b n (t h d) -> t b h n d", t=3, h=self.heads)
        q, k, v = qkv.unbind(0)
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        return q, k, v

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        attend = attention_sdpa if self.fast else attention_naive
        out = attend(q, k, v, causal=self.causal)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))

    def forward(self, x: Tensor) -> Tensor:  # x: (b n c)
        check_ndim("x", x, 3, "b n c")
        return self._attend(*self._qkv(x))

    def init_state(self, batch: int) -> tuple[Tensor, Tensor] | None:
        return None  # the cache starts empty; its length is the position offset

    def step(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One token x: (b c) -> (b c), appending its key and value to the cache."""
        check(self.causal, "step() needs a causal attention")
        offset = 0 if state is None else state[0].shape[2]
        q, k, v = self._qkv(x[:, None], offset)
        if state is not None:
            k, v = torch.cat((state[0], k), dim=2), torch.cat((state[1], v), dim=2)
        return self._attend(q, k, v)[:, 0], (k, v)
