"""Dilated attention: LongNet's linear-cost attention over segments and dilations.

"LongNet: Scaling Transformers to 1,000,000,000 Tokens" (Ding, Ma, Dong, Zhang,
Huang, Wang, Zheng, Wei, 2023, arXiv:2307.02486), section 2.

One branch (segment length w, dilation r). The sequence is cut into segments of w
positions; in each segment every r-th position is kept, attention runs inside the
sparsified segment, and the outputs are scattered back (eq. 5-8):

    Q~_i = [Q_{iw + s}, Q_{iw + s + r}, ..., ]     (same for K~, V~),
    O~_i = softmax(Q~_i K~_i^T / sqrt(d)) V~_i,    O = scatter(O~_0, O~_1, ...),

where head j starts at offset s_j = j mod r (section 2.4), so that with h >= r heads
together cover every position. With fewer heads than r the paper's offsets would
leave the residues h..r-1 to no head; here head j then takes every offset
s = j, j + h, j + 2h, ... < r, each attended separately (as if the head were split
into ceil(r / h) heads sharing its projections). In both cases head j keeps
position p iff (p mod r) = j (mod min(h, r)), and every query sees, in every
branch, each earlier key of its segment with its own residue. Positions a head does
not keep get no output from that branch. Each (head, offset) costs
(N / w)(w / r)^2 = N w / r^2 scores per branch: linear in N.

Several branches (w_k, r_k) are mixed by their softmax denominators (eq. 10):

    O = sum_k a_k O_k,   a_k = s_k / sum_l s_l,   s_k = sum_{j in P_k(i)} e^{q_i k_j},

which is exactly softmax attention over the keys of all branches together, a key
seen by two branches counted twice. ``dedupe=True`` adds a bias -log c_ij (c_ij the
number of branches in which query i sees key j), after which the mixture is exactly
attention over the boolean union of the patterns. The mixture is computed from the
log-sum-exp LSE_k = log s_k: a_k = exp(LSE_k - logsumexp_l LSE_l).

Causal masking compares original positions; a ragged last segment is padded and the
padding is masked. ``dilated_attention_reference`` is the attention core's
``attention_naive`` with the dense (h n n) pattern as its mask (and log c_ij as its
bias): the O(N^2) check of the O(N) code.

Shapes: b batch, h heads, n sequence, d head dim, c model dim, s segments,
m positions kept per segment (w / r), r dilation, i/j query/key in a segment,
k branch, v vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import Tensor, nn

from minimodels._util import (
    check,
    check_divides,
    check_int,
    check_ndim,
    check_positive,
    default,
)
from minimodels.attention import (
    RotaryEmbedding,
    attention_naive,
    attention_naive_lse,
    merge_heads,
    split_heads,
)

__all__ = [
    "Branch",
    "make_branches",
    "head_offsets",
    "head_slots",
    "keeps",
    "kept_positions",
    "sparsify",
    "scatter_back",
    "effective_segment",
    "branch_mask",
    "reach",
    "pattern_counts",
    "dedupe_bias",
    "attend_sparse",
    "dilated_branch",
    "combine_branches",
    "dilated_attention",
    "dilated_attention_reference",
    "DilatedAttention",
]

Branch = tuple[int, int]  # (segment length w, dilation r)


def make_branches(
    segment_lengths: Sequence[int], dilation_rates: Sequence[int]
) -> list[Branch]:
    """The (w, r) pairs, checked: as many rates as lengths, at least one pair,
    positive integers, r dividing w. Any number of heads covers every position
    (``head_slots``)."""
    check(
        len(segment_lengths) == len(dilation_rates),
        f"segment_lengths ({len(segment_lengths)}) and dilation_rates "
        f"({len(dilation_rates)}) must have the same length",
    )
    check(len(segment_lengths) > 0, "segment_lengths must name at least one branch")
    for w, r in zip(segment_lengths, dilation_rates):
        check_int(segment_length=w, dilation_rate=r)
        check_positive(segment_length=w, dilation_rate=r)
        check_divides("dilation_rate", r, "segment_length", w)
    return [(int(w), int(r)) for w, r in zip(segment_lengths, dilation_rates)]


def head_offsets(heads: int, r: int, device: torch.device | None = None) -> Tensor:
    """s_j = j mod r: the first position head j keeps in each segment. (h,)"""
    return torch.arange(heads, device=device) % r


def head_slots(heads: int, r: int) -> int:
    """u: offsets per head in a branch of dilation r; 1 when heads >= r, else
    ceil(r / heads) (head j takes j, j + h, ...; slots past r stay empty)."""
    return 1 if heads >= r else -(-r // heads)


def keeps(pos: Tensor, head: Tensor, heads: int, r: int) -> Tensor:
    """Whether head ``head`` of ``heads`` keeps position ``pos`` in a branch of
    dilation r: (pos mod r) = head (mod min(heads, r)). Broadcasts."""
    m = min(heads, r)
    return pos % r % m == head % m


def expand_slots(t: Tensor, r: int) -> Tensor:
    """(b h n d) -> (b r n d) when h < r: slot v = i h + j is head j at offset v."""
    u = head_slots(t.shape[1], r)
    return t if u == 1 else repeat(t, "b h n d -> b (u h) n d", u=u)[:, :r]


def fold_slots(o: Tensor, lse: Tensor, heads: int, r: int) -> tuple[Tensor, Tensor]:
    """Undo ``expand_slots``: o (b r n d) -> (b h n d), lse (b r n) -> (b h n).
    A head's slots keep disjoint positions: its output is their sum."""
    u = head_slots(heads, r)
    if u == 1:
        return o, lse
    extra = u * heads - r  # empty slots of the last round
    o = reduce(F.pad(o, (0, 0, 0, 0, 0, extra)), "b (u h) n d -> b h n d", "sum", u=u)
    lse = F.pad(lse, (0, 0, 0, extra), value=float("-inf"))
    return o, reduce(lse, "b (u h) n -> b h n", "max", u=u)


def effective_segment(w: int, r: int, n: int) -> int:
    """A segment longer than the sequence is the whole sequence (rounded up to r)."""
    return min(w, -(-n // r) * r)


def kept_positions(
    heads: int, segments: int, w: int, r: int, start: int = 0, device=None
) -> Tensor:
    """Original positions of the kept rows: start + s w + s_j + r t. (h s m)"""
    seg = torch.arange(segments, device=device)[None, :, None] * w
    t = torch.arange(w // r, device=device)[None, None, :] * r
    return start + seg + t + head_offsets(heads, r, device)[:, None, None]


def _select_index(x: Tensor, r: int) -> Tensor:
    b, h, s, m = x.shape[:4]
    idx = head_offsets(h, r, x.device).view(1, h, 1, 1, 1, 1)
    return idx.expand(b, h, s, m, 1, x.shape[-1])


def sparsify(x: Tensor, w: int, r: int) -> Tensor:
    """(b h s*w d) -> (b h s m d): row s_j + r t of every segment, for head j."""
    x = rearrange(x, "b h (s m r) d -> b h s m r d", m=w // r, r=r)
    return x.gather(4, _select_index(x, r)).squeeze(4)


def scatter_back(y: Tensor, r: int, fill: float = 0.0) -> Tensor:
    """(b h s m d) -> (b h s*w d): the inverse of ``sparsify``, ``fill`` elsewhere."""
    b, h, s, m, d = y.shape
    full = y.new_full((b, h, s, m, r, d), fill)
    out = full.scatter(4, _select_index(full, r), y.unsqueeze(4))
    return rearrange(out, "b h s m r d -> b h (s m r) d")


def pattern_counts(
    q_pos: Tensor, k_pos: Tensor, branches: Sequence[Branch], n: int, heads: int
) -> Tensor:
    """c_ij: in how many branches query position i and key position j share a
    segment and a residue kept by the head. q_pos (u ... i), k_pos (u ... j):
    row v belongs to head v mod ``heads`` (``expand_slots``)."""
    rows = q_pos.shape[0]
    head = (torch.arange(rows, device=q_pos.device) % heads).view(
        rows, *(1,) * q_pos.ndim
    )
    qp, kp = q_pos[..., :, None], k_pos[..., None, :]
    count = torch.zeros(torch.broadcast_shapes(qp.shape, kp.shape), dtype=torch.long)
    count = count.to(q_pos.device)
    for w, r in branches:
        w = effective_segment(w, r, n)
        same = (qp // w == kp // w) & (qp % r == kp % r) & keeps(qp, head, heads, r)
        count += same.long()
    return count


def dedupe_bias(
    q_pos: Tensor, k_pos: Tensor, branches: Sequence[Branch], n: int, heads: int,
    dtype: torch.dtype,
) -> Tensor:  # fmt: skip
    """-log c_ij (``pattern_counts``): a key that c branches share counts once."""
    count = pattern_counts(q_pos, k_pos, branches, n, heads).clamp(min=1)
    return -torch.log(count.to(torch.promote_types(dtype, torch.float32)))


def attend_sparse(
    q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor,
    *, n: int, causal: bool, scale: float, bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Softmax attention inside each sparsified segment, with its log-sum-exp:
    the core's ``attention_naive_lse`` with the heads moved next to the rows.

    q (b h s i d), k and v (b h s j d), q_pos (h s i), k_pos (h s j): original
    positions; keys at positions >= n are padding. Returns o (b h s i d) and
    lse (b h s i), -inf (and o = 0) for a query that sees no key.
    """
    visible = (k_pos < n)[..., None, :]  # (h s 1 j)
    if causal:
        visible = visible & (k_pos[..., None, :] <= q_pos[..., :, None])
    work = torch.promote_types(q.dtype, torch.float32)
    qs, ks, vs = (t.to(work).transpose(1, 2) for t in (q, k, v))  # (b s h i d)
    o, lse = attention_naive_lse(
        qs, ks, vs, scale=scale, mask=visible.transpose(0, 1),
        bias=None if bias is None else bias.transpose(0, 1),
    )  # fmt: skip
    return o.transpose(1, 2).to(q.dtype), lse.transpose(1, 2)


def dilated_branch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    w: int,
    r: int,
    *,
    causal: bool,
    scale: float,
    dedupe_over: Sequence[Branch] | None = None,
    start: int = 0,
    n_total: int | None = None,
) -> tuple[Tensor, Tensor]:
    """One (w, r) branch over q, k, v (b h n d) -> o (b h n d), lse (b h n).

    ``start``/``n_total`` place this slice in a longer sequence (sequence
    parallelism: w must then divide n); ``dedupe_over`` lists all branches when
    shared keys are to be counted once.
    """
    b, h, n, d = q.shape
    n_total = default(n_total, start + n)
    w = effective_segment(w, r, n_total)
    pad = -n % w
    q, k, v = (expand_slots(F.pad(t, (0, 0, 0, pad)), r) for t in (q, k, v))
    segments = (n + pad) // w
    pos = kept_positions(q.shape[1], segments, w, r, start, q.device)  # (u s m)
    bias = None
    if dedupe_over is not None:
        bias = dedupe_bias(pos, pos, dedupe_over, n_total, h, q.dtype)
    qs, ks, vs = (sparsify(t, w, r) for t in (q, k, v))
    o, lse = attend_sparse(
        qs, ks, vs, pos, pos, n=n_total, causal=causal, scale=scale, bias=bias
    )
    o = scatter_back(o, r)[:, :, :n]
    lse = scatter_back(lse[..., None], r, float("-inf"))[:, :, :n, 0]
    return fold_slots(o, lse, h, r)


def combine_branches(outs: Sequence[Tensor], lses: Sequence[Tensor]) -> Tensor:
    """O = sum_k a_k O_k with a_k = exp(LSE_k - logsumexp_l LSE_l) (eq. 10).

    outs: k x (b h n d), lses: k x (b h n). A query no branch sees gets 0.
    """
    lse = torch.stack(list(lses))  # (k b h n)
    m = lse.amax(0, keepdim=True).detach()
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    weight = torch.exp(lse - m)  # s_k / e^m
    total = weight.sum(0)
    total = torch.where(total == 0, torch.ones_like(total), total)
    out = sum(wk[..., None].to(o.dtype) * o for wk, o in zip(weight, outs))
    return out / total[..., None].to(out.dtype)


def dilated_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    *,
    causal: bool = True,
    dedupe: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Multi-branch dilated attention: q, k (b h n d), v (b h n e) -> (b h n e)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_ndim(name, t, 4, "b h n d")
        check(t.is_floating_point(), f"{name} must be a floating tensor, got {t.dtype}")
    check(q.shape[2] > 0, "the sequence is empty (n = 0): nothing to attend to")
    check(
        q.shape == k.shape and v.shape[:3] == q.shape[:3],
        f"q and k must have the same shape and v the same (b h n), got "
        f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}",
    )
    pairs = make_branches(segment_lengths, dilation_rates)
    scale = default(scale, 1.0 / math.sqrt(q.shape[-1]))
    outs, lses = [], []
    for w, r in pairs:
        o, lse = dilated_branch(
            q, k, v, w, r, causal=causal, scale=scale,
            dedupe_over=pairs if dedupe else None,
        )  # fmt: skip
        outs.append(o)
        lses.append(lse)
    return combine_branches(outs, lses)


def branch_mask(n: int, heads: int, w: int, r: int, *, causal: bool) -> Tensor:
    """Dense (h n n) boolean pattern of one branch: True where query i sees key j."""
    i = torch.arange(n)[None, :, None]
    j = torch.arange(n)[None, None, :]
    w = effective_segment(w, r, n)
    head = torch.arange(heads)[:, None, None]
    mask = (i // w == j // w) & (i % r == j % r) & keeps(i, head, heads, r)
    return mask & (j <= i) if causal else mask


def reach(n: int, heads: int, branches: Sequence[Branch], layers: int = 1) -> Tensor:
    """(n n) bool: whether key position j can influence query i through ``layers``
    causal layers of these branches (the residual stream adds i <- i)."""
    step = torch.eye(n, dtype=torch.bool)
    for w, r in branches:
        step |= branch_mask(n, heads, w, r, causal=True).any(0)
    out = torch.eye(n, dtype=torch.bool)
    for _ in range(layers):
        out = (out.double() @ step.double()) > 0  # i <- x in one more layer <- j
    return out


def dilated_attention_reference(
    q: Tensor, k: Tensor, v: Tensor,
    segment_lengths: Sequence[int], dilation_rates: Sequence[int],
    *, causal: bool = True, dedupe: bool = False, scale: float | None = None,
) -> Tensor:  # fmt: skip
    """The O(N^2) definition: the core's ``attention_naive`` over the union of
    the branch patterns, a key counted once per branch that sees it (bias
    log c_ij), or once if ``dedupe``. A row that sees no key gives 0."""
    h, n = q.shape[1:3]
    pairs = make_branches(segment_lengths, dilation_rates)
    masks = [branch_mask(n, h, w, r, causal=causal) for w, r in pairs]
    counts = torch.stack(masks).sum(0).to(q.device)  # (h n n): c_ij
    bias = None if dedupe else torch.log(counts.clamp(min=1).to(q.dtype))
    return attention_naive(q, k, v, scale=scale, mask=counts > 0, bias=bias)


class DilatedAttention(nn.Module):
    """Multi-head dilated attention as a sequence mixer: (b n c) -> (b n c).

    The seed API ``DilatedAttention(dim, heads, dilation_rate, segment_size,
    qk_norm=False, causal=True)`` gives one branch; ``segment_lengths=`` and
    ``dilation_rates=`` (equal-length sequences) give LongNet's mixture.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dilation_rate: int = 1,
        segment_size: int = 64,
        qk_norm: bool = False,
        causal: bool = True,
        *,
        segment_lengths: Sequence[int] | None = None,
        dilation_rates: Sequence[int] | None = None,
        dim_head: int | None = None,
        rotary: bool = True,
        dedupe: bool = False,
    ) -> None:
        super().__init__()
        check_int(dim=dim, heads=heads)
        check_positive(dim=dim, heads=heads)
        check(
            (segment_lengths is None) == (dilation_rates is None),
            "give both segment_lengths and dilation_rates, or neither",
        )
        if segment_lengths is None or dilation_rates is None:  # the seed's one branch
            segment_lengths, dilation_rates = (segment_size,), (dilation_rate,)
        self.branches = make_branches(segment_lengths, dilation_rates)
        if dim_head is None:
            check_divides("heads", heads, "dim", dim)
        self.heads, self.dim_head = heads, default(dim_head, dim // heads)
        check_positive(dim_head=self.dim_head)
        self.causal, self.dedupe = causal, dedupe
        inner = heads * self.dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.q_norm = nn.LayerNorm(self.dim_head) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.dim_head) if qk_norm else nn.Identity()
        self.rotary = RotaryEmbedding(self.dim_head) if rotary else None

    def qkv(self, x: Tensor, offset: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """Project x (b n c) to q, k, v (b h n d); ``offset`` is x's first position."""
        q, k, v = split_heads(self.to_qkv(x), self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        return q, k, v

    def out(self, o: Tensor) -> Tensor:  # o: (b h n d) -> (b n c)
        return self.to_out(merge_heads(o))

    def forward(self, x: Tensor) -> Tensor:  # x: (b n c)
        check_ndim("x", x, 3, "b n c")
        check(x.shape[1] > 0, "x is an empty sequence (n = 0)")
        segment_lengths, dilation_rates = zip(*self.branches)
        o = dilated_attention(
            *self.qkv(x), segment_lengths, dilation_rates, causal=self.causal,
            dedupe=self.dedupe,
        )  # fmt: skip
        return self.out(o)


def __getattr__(name: str) -> Any:
    """``LongNetTransformer``, the seed package's whole model, lives in
    ``minimodels.longnet``; the seed README's import from here still works."""
    if name == "LongNetTransformer":
        from minimodels.longnet import LongNetTransformer

        return LongNetTransformer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
