"""Softmax attention: the reference every long-context model is measured against.

"Attention Is All You Need" (Vaswani et al., 2017, arXiv:1706.03762):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + B + M) V,

with B an optional additive bias (a relative-position bias, say) and M = -inf where
a key is hidden. This module is the book's one attention core: every model
(multi-head attention, block recurrence, the hierarchical and dilated models) calls
``attention_naive`` (which builds the (n, m) score matrix) or ``attention_sdpa``
(the same arguments through ``F.scaled_dot_product_attention``; tested equal).

What a query may see is the AND of three optional parts:

- ``causal=True``: query i sees keys j <= i + m - n. Queries and keys may have
  different lengths; the mask is aligned to the *end* of the keys (the m - n extra
  keys lie before the first query: a KV cache, or block recurrence's memories), as
  in FlashAttention-2 and KV-cache decoding.
- ``window=w``: the causal band of the last w keys, i + m - n - w < j <= i + m - n
  (query i and the w - 1 keys before it). A window implies ``causal``.
- ``mask``: a boolean tensor broadcast to (... h n m), True = may attend.

A query row that sees no key at all returns zeros (not NaN) in both paths, with
zero gradients: its scores are left unmasked, and its output is zeroed.

Keys and values may have fewer heads than the queries (multi-query and grouped
attention, Shazeer 2019, arXiv:1911.02150; Ainslie et al. 2023, arXiv:2305.13245):
k, v with h_kv heads, h_kv dividing h, query head i reads key head i // (h / h_kv).
Any leading batch axes are allowed: q (... h n d), so a model can attend every
block of a sequence at once, (b t h w d), with a mask of shape (t 1 w m).

``local_attention`` is the causal sliding window in O(n w) memory: blocks of w
queries attend to their own block and ``look_back`` blocks before it; its plain
twin is ``attention_naive(..., window=look_back * w)``.

Rotary position embeddings: "RoFormer" (Su et al., 2021, arXiv:2104.09864), at
integer offsets or at any (float) positions. The FlashAttention ladder (tiles,
online softmax, the FA2 backward) lives in ``minimodels.flash``.

Shapes: b batch, h heads, k key/value heads, n query length, m key length,
d head dim, c model dim, t blocks, w block width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from minimodels._util import check, check_divides, check_int, check_ndim, check_positive

__all__ = [
    "attention_naive",
    "attention_naive_lse",
    "attention_sdpa",
    "local_attention",
    "causal_mask",
    "split_heads",
    "merge_heads",
    "MultiHeadAttention",
    "RotaryEmbedding",
]


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """The ladder's and the kernels' inputs: (b h n d), the same heads."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_ndim(name, t, 4, "b h n d")
    _check_core(q, k, v)
    check(
        q.shape[:2] == k.shape[:2],
        f"q, k, v must share batch and heads, got {tuple(q.shape)}, "
        f"{tuple(k.shape)}, {tuple(v.shape)}",
    )


def _check_core(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check(t.ndim >= 4, f"{name} must have shape (b h n d), got {tuple(t.shape)}")
        check(
            t.is_floating_point(),
            f"{name} must be a floating-point tensor, got {t.dtype}",
        )
    check(
        q.shape[:-3] == k.shape[:-3] == v.shape[:-3] and k.shape[-3] == v.shape[-3],
        f"q, k, v must share batch axes, k and v their heads, got {tuple(q.shape)}, "
        f"{tuple(k.shape)}, {tuple(v.shape)}",
    )
    check_divides("k and v's heads", k.shape[-3], "q's heads", q.shape[-3])
    check(k.shape[-2] == v.shape[-2], "k and v must have the same length")
    check(q.shape[-1] == k.shape[-1], "q and k must have the same head dim")
    check(q.dtype == k.dtype == v.dtype, "q, k, v must have the same dtype")


def causal_mask(
    n: int, m: int, device: torch.device | None = None, *, window: int | None = None
) -> Tensor:
    """(n, m) boolean mask, True where query i may see key j: j <= i + m - n (the
    end-aligned causal mask), and with a ``window`` also j > i + m - n - window."""
    i = torch.arange(n, device=device)[:, None] + (m - n)
    j = torch.arange(m, device=device)[None, :]
    if window is None:
        return j <= i
    return (j <= i) & (j > i - window)


def _prepare(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool,
    mask: Tensor | None,
    bias: Tensor | None,
    window: int | None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Checks; k and v broadcast to q's heads; the visible mask (None: all keys)
    and the rows that see no key (None when no row can be empty)."""
    _check_core(q, k, v)
    if mask is not None:
        check(mask.dtype == torch.bool, f"mask must be boolean, got {mask.dtype}")
    if bias is not None:
        check(bias.is_floating_point(), f"bias must be floating, got {bias.dtype}")
    h, h_kv = q.shape[-3], k.shape[-3]
    if h_kv != h:  # query head i reads key/value head i // (h / h_kv)
        k, v = (
            t.unsqueeze(-3).expand(*t.shape[:-2], h // h_kv, *t.shape[-2:])
            for t in (k, v)
        )
        k, v = k.flatten(-4, -3), v.flatten(-4, -3)
    n, m = q.shape[-2], k.shape[-2]
    visible = mask
    if causal or window is not None:
        if window is not None:
            check_int(window=window)
            check_positive(window=window)
        band = causal_mask(n, m, q.device, window=window)
        visible = band if mask is None else mask & band
    empty = None
    if visible is not None and (mask is not None or n > m):
        empty = ~visible.any(-1, keepdim=True)  # rows that see no key
        visible = visible | empty  # ... are computed unmasked, then zeroed
    return k, v, visible, empty


def attention_naive(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None,
    *, mask: Tensor | None = None, bias: Tensor | None = None, window: int | None = None
) -> Tensor:  # fmt: skip
    """Plain attention that materializes the (n, m) score matrix.

    q: (... h n d), k and v: (... k m d) -> (... h n d); mask and bias broadcast
    to (... h n m).
    """
    return _naive(q, k, v, causal, scale, mask, bias, window)[0]


def attention_naive_lse(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None,
    *, mask: Tensor | None = None, bias: Tensor | None = None, window: int | None = None
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``attention_naive`` and each row's log-sum-exp of its visible scores,
    LSE_i = log sum_j exp(s_ij) (... h n): what mixing attentions over different
    key sets by their softmax denominators needs (dilated attention's branches,
    ``minimodels.dilated``). A row that sees no key: output 0, LSE -inf."""
    out, s, empty = _naive(q, k, v, causal, scale, mask, bias, window)
    lse = torch.logsumexp(s, dim=-1)
    return out, lse if empty is None else lse.masked_fill(empty[..., 0], float("-inf"))


def _naive(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float | None,
    mask: Tensor | None, bias: Tensor | None, window: int | None,
) -> tuple[Tensor, Tensor, Tensor | None]:  # fmt: skip
    """The output, the masked scores (float32 for fp16/bf16 inputs) and the rows
    that see no key (None when none can be empty)."""
    k, v, visible, empty = _prepare(q, k, v, causal, mask, bias, window)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.einsum("...hnd,...hmd->...hnm", q, k) * scale
    if bias is not None:
        s = s + bias
    if visible is not None:
        s = s.masked_fill(~visible, float("-inf"))
    if q.dtype in (torch.float16, torch.bfloat16):
        s = s.float()
    out = torch.einsum("...hnm,...hmd->...hnd", s.softmax(-1).to(q.dtype), v)
    return (out if empty is None else out.masked_fill(empty, 0.0)), s, empty


def attention_sdpa(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None,
    *, mask: Tensor | None = None, bias: Tensor | None = None, window: int | None = None
) -> Tensor:  # fmt: skip
    """The same attention through ``F.scaled_dot_product_attention`` (fused kernels).

    SDPA's ``is_causal`` aligns the mask to the *start*; for n != m, a window, a
    mask or a bias we pass the mask (or the bias, -inf where hidden) explicitly.
    """
    plain = mask is None and bias is None and window is None
    if plain and (not causal or q.shape[-2] == k.shape[-2]):
        _check_core(q, k, v)
        if k.shape[-3] == q.shape[-3]:
            return _sdpa(q, k, v, None, scale, is_causal=causal)
    k, v, visible, empty = _prepare(q, k, v, causal, mask, bias, window)
    attn_mask = visible
    if bias is not None:
        attn_mask = bias.to(q.dtype)
        if visible is not None:
            attn_mask = attn_mask.masked_fill(~visible, float("-inf"))
    out = _sdpa(q, k, v, attn_mask, scale)
    return out if empty is None else out.masked_fill(empty, 0.0)


def _sdpa(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, scale: float | None,
    is_causal: bool = False,
) -> Tensor:  # fmt: skip
    """SDPA on (b h n d): with more than one batch axis PyTorch 2.13 takes a
    slower path on CPU (forward and backward 1.4x slower at block recurrence's
    sizes, measured), so leading axes are merged, the mask expanded to them."""
    lead = q.shape[:-3]
    if len(lead) > 1:
        if attn_mask is not None:
            attn_mask = attn_mask.reshape(
                (1,) * (q.ndim - attn_mask.ndim) + attn_mask.shape
            )
            attn_mask = attn_mask.expand(*lead, *attn_mask.shape[-3:]).flatten(0, -4)
        q, k, v = (t.flatten(0, -4) for t in (q, k, v))
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale
    )
    return out.unflatten(0, lead) if len(lead) > 1 else out


def _look_back(x: Tensor, look_back: int) -> Tensor:
    """(... t h w d) -> (... t h (L+1)w d): each block after the L blocks before
    it (zeros before the first block)."""
    t = x.shape[-4]
    shifted = [
        F.pad(x[..., : max(t - i, 0), :, :, :], (0, 0, 0, 0, 0, 0, min(i, t), 0))
        for i in range(look_back, 0, -1)
    ]
    return torch.cat((*shifted, x), dim=-2)


def local_attention(
    q: Tensor, k: Tensor, v: Tensor, window: int, *, look_back: int = 1,
    fast: bool = True,
) -> Tensor:  # fmt: skip
    """Causal sliding-window attention in blocks: query i sees the L w keys
    i - L w < j <= i (L = ``look_back``), computed as blocks of w queries against
    their own block and the L before it, so memory is O(n (L+1) w), not O(n^2).

    q, k, v: (... h n d) with k, v possibly fewer heads -> (... h n d). Equal to
    ``attention_naive(q, k, v, window=look_back * window)`` (tested); ``fast``
    picks SDPA or the naive core for the blocks.
    """
    _check_core(q, k, v)
    check_int(window=window, look_back=look_back)
    check_positive(window=window, look_back=look_back)
    n, w = q.shape[-2], window
    check(k.shape[-2] == n, f"local_attention needs n keys, got {k.shape[-2]} != {n}")
    pad = (-n) % w
    q, k, v = (
        rearrange(F.pad(t, (0, 0, 0, pad)), "... h (t w) d -> ... t h w d", w=w)
        for t in (q, k, v)
    )
    k, v = _look_back(k, look_back), _look_back(v, look_back)
    blocks, span = q.shape[-4], (look_back + 1) * w
    mask = causal_mask(w, span, q.device, window=look_back * w)  # (w, span)
    first = torch.arange(span, device=q.device) // w - look_back  # key block - own
    exists = torch.arange(blocks, device=q.device)[:, None] + first >= 0  # (t span)
    mask = (mask & exists[:, None, :])[:, None]  # (t 1 w span)
    attend = attention_sdpa if fast else attention_naive
    out = attend(q, k, v, mask=mask)
    return rearrange(out, "... t h w d -> ... h (t w) d")[..., :n, :]


def split_heads(x: Tensor, heads: int, parts: int = 3) -> tuple[Tensor, ...]:
    """(... n (parts h d)) -> ``parts`` tensors of (... h n d): a fused q, k, v
    projection (parts=3), k and v (2), or one projection (1)."""
    x = rearrange(x, "... n (t h d) -> t ... h n d", t=parts, h=heads)
    return tuple(x.unbind(0))


def merge_heads(x: Tensor) -> Tensor:
    """(... h n d) -> (... n (h d)), the inverse of one ``split_heads`` part."""
    return rearrange(x, "... h n d -> ... n (h d)")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding: rotate channel pairs (x_{2i}, x_{2i+1}) by the
    angle p theta_i, theta_i = base^(-2i/d), at position p."""

    inv_freq: Tensor

    def __init__(self, dim_head: int, base: float = 10_000.0) -> None:
        super().__init__()
        check(dim_head % 2 == 0, f"dim_head must be even for rotary, got {dim_head}")
        inv_freq = base ** (-torch.arange(0, dim_head, 2).float() / dim_head)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, positions: int | Tensor = 0) -> Tensor:
        """x: (... n d). ``positions``: an int offset (tokens at offset, offset + 1,
        ...) or a tensor (n,) of positions, integer or float."""
        if isinstance(positions, Tensor):
            check_ndim("positions", positions, 1, "n")
            check(
                positions.shape[0] == x.shape[-2],
                f"positions has {positions.shape[0]} entries for {x.shape[-2]} tokens",
            )
            pos = positions.to(x.device)
        else:
            pos = torch.arange(positions, positions + x.shape[-2], device=x.device)
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
        check_positive(dim=dim, heads=heads)
        if dim_head is None:
            check_divides("heads", heads, "dim", dim)
        else:
            check_positive(dim_head=dim_head)
        self.heads = heads
        self.dim_head = dim // heads if dim_head is None else dim_head
        self.causal, self.fast = causal, fast
        inner = heads * self.dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.rotary = RotaryEmbedding(self.dim_head) if rotary else None

    def _qkv(self, x: Tensor, offset: int = 0) -> tuple[Tensor, ...]:
        q, k, v = split_heads(self.to_qkv(x), self.heads)
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        return q, k, v

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        attend = attention_sdpa if self.fast else attention_naive
        return self.to_out(merge_heads(attend(q, k, v, causal=self.causal)))

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
