"""Hierarchical compression: the simple hierarchical transformer.

It builds on the hourglass (``minimodels.hourglass``; "Hierarchical Transformers
Are More Efficient Language Models", Nawrot et al., 2022, arXiv:2110.13711), whose
shift by k - 1 before pooling keeps a compressed token z_j from seeing the future:

    z_j = Pool(x_{jk-k+1}, ..., x_{jk}).                                   (1)

The hierarchical transformer (the ``simple-hierarchical-transformer`` package's
API) keeps one token stream per hierarchy l (factor k_l, stride s_l | k_l). A
depthwise causal convolution (kernel k_l, stride s_l, left padding k_l - 1: eq. 1
with a learned pool) makes z^l_i from x_{i s_l - k_l + 1 .. i s_l}. Every layer
runs a block (token shift, windowed causal attention, MLP) on each stream, where a
stream attends along tokens k_l fine positions apart (k_l / s_l interleaved
groups); then all streams are repeated s_l times back to the fine length and
merged into the stream that predicts:

    h <- h + W_2 act(sum_l Repeat_{s_l}(W_1^l Norm_l(z^l))).                (2)

Token shift: "RWKV" (Peng et al., 2023, arXiv:2305.13048).

Shapes: b batch, n fine length, m compressed length, c channels, k factor,
s stride, g groups (k / s), h heads, d head dim, w window, v vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from minimodels._util import check, check_divides, check_int, check_positive
from minimodels.attention import (
    MultiHeadAttention,
    attention_naive,
    local_attention,
    merge_heads,
)
from minimodels.hourglass import (
    Hourglass,
    check_ids,
    shift_right,
    upsample,
)
from minimodels.lm import Shell

__all__ = [
    "Hourglass",  # minimodels.hourglass's, also found here (the registry's model)
    "token_shift",
    "LocalAttention",
    "Compress",
    "HierarchicalBlock",
    "HierarchicalMerge",
    "HierarchicalTransformer",
]


def token_shift(x: Tensor) -> Tensor:
    """(b n c): the second half of the channels comes from the previous position."""
    x, x_prev = x.chunk(2, dim=-1)
    return torch.cat((x, shift_right(x_prev, 1)), dim=-1)


class LocalAttention(MultiHeadAttention):
    """The core's causal ``MultiHeadAttention`` (b n c) -> (b n c) over the last
    ``window`` positions; ``window=None`` attends to the whole prefix. ``fast``
    picks ``local_attention`` (blocks of ``window`` queries against their block
    and the one before, O(n w)) over ``attention_naive(..., window=)``, the
    (n n) band; same results, tested. ``step`` decodes through the band."""

    def __init__(
        self,
        dim: int,
        *,
        window: int | None = None,
        heads: int = 4,
        dim_head: int = 32,
        fast: bool = True,
    ) -> None:
        check_int(dim=dim, heads=heads, dim_head=dim_head)
        check_positive(dim=dim, heads=heads, dim_head=dim_head)
        if window is not None:
            check_int(window=window)
            check(window > 0, f"window must be > 0, got {window}")
        super().__init__(dim, heads=heads, dim_head=dim_head, fast=fast)
        self.window = window

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        w, n, m = self.window, q.shape[-2], k.shape[-2]
        if w is None or w >= m:  # the window holds the whole prefix
            return super()._attend(q, k, v)
        if self.fast and n == m:
            out = local_attention(q, k, v, w)
        else:
            out = attention_naive(q, k, v, window=w)
        return self.to_out(merge_heads(out))


# --- The simple hierarchical transformer ------------------------------------------


class Compress(nn.Module):
    """(b n c) -> (b n/s d): depthwise conv over k tokens with stride s, then a
    pointwise projection (dsconv). Left padding k - 1 is the hourglass shift;
    ``shift=False`` pads on the right instead, and leaks."""

    def __init__(
        self, dim: int, dim_out: int, factor: int, stride: int = 1, shift: bool = True
    ) -> None:
        super().__init__()
        self.factor, self.stride, self.shift = factor, stride, shift
        self.conv = None
        if factor > 1:
            self.conv = nn.Conv1d(dim, dim, factor, stride=stride, groups=dim)
        same = factor == 1 and dim == dim_out
        self.proj = nn.Identity() if same else nn.Linear(dim, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is not None:
            pad = (self.factor - 1, 0) if self.shift else (0, self.factor - 1)
            x = F.pad(rearrange(x, "b n c -> b c n"), pad)
            x = rearrange(self.conv(x), "b c m -> b m c")
        return self.proj(x)


class HierarchicalBlock(nn.Module):
    """One hierarchy's block on (b m c): token shift, then windowed attention
    (``window=0``: none) and an MLP, each pre-norm and residual. With ``groups``
    g > 1 the stream is split into g interleaved sequences of tokens k fine
    positions apart, and each attends only within itself."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        dim_head: int,
        window: int | None,
        ff_mult: int,
        groups: int = 1,
        fast: bool = True,
    ) -> None:
        super().__init__()
        self.groups = groups
        self.attn = None
        if window != 0:
            self.attn = LocalAttention(
                dim, heads=heads, dim_head=dim_head, window=window, fast=fast
            )
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim)
        )

    def forward(self, z: Tensor) -> Tensor:
        z = rearrange(z, "b (m g) c -> (b g) m c", g=self.groups)
        if self.attn is not None:
            z = z + self.attn(self.norm1(token_shift(z)))
        z = z + self.ff(self.norm2(token_shift(z)))
        return rearrange(z, "(b g) m c -> b (m g) c", g=self.groups)


class HierarchicalMerge(nn.Module):
    """Eq. 2: project each stream at its own (short) length, repeat to the fine
    length, sum, then an MLP; the same as one linear layer on the concatenation."""

    def __init__(
        self, dims: tuple[int, ...], dim_out: int, strides: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.strides = strides
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.ins = nn.ModuleList(nn.Linear(d, 2 * dim_out, bias=False) for d in dims)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(2 * dim_out, dim_out))

    def forward(self, tokens: list[Tensor], length: int) -> Tensor:
        parts = zip(tokens, self.norms, self.ins, self.strides)
        h = sum(upsample(w(norm(z)), s, length) for z, norm, w, s in parts)
        return self.out(h)


@dataclass(frozen=True)
class Level:
    """One hierarchy: factor k, stride s (s | k), width, and its attention
    (``window`` None: full causal attention, 0: token shift only)."""

    factor: int
    stride: int
    dim: int
    heads: int
    dim_head: int
    ff_mult: int
    window: int | None


def _per_level(name: str, value: Any, levels: int) -> tuple:
    if not isinstance(value, (tuple, list)):
        return (value,) * levels
    check(
        len(value) == levels,
        f"{name} has {len(value)} entries but hierarchies has {levels}: "
        f"give one value per hierarchy or a single value",
    )
    return tuple(value)


def _check_level(level: Level) -> None:
    k, s, w = level.factor, level.stride, level.window
    check_int(dim=level.dim, dim_head=level.dim_head, heads=level.heads)
    check_int(ff_mult=level.ff_mult, hierarchical_stride=s)
    if w is not None:
        check_int(window_sizes=w)
    check_positive(dim=level.dim, dim_head=level.dim_head, heads=level.heads)
    check_positive(ff_mult=level.ff_mult, hierarchical_stride=s)
    check_divides("hierarchical_stride", s, f"hierarchy {k}", k)
    check(w is None or w >= 0, f"window_sizes must be None or >= 0: {w}")


def make_levels(
    hierarchies: int | Sequence[int],
    *,
    dim: int | Sequence[int],
    dim_head: int | Sequence[int],
    heads: int | Sequence[int],
    ff_mult: int | Sequence[int],
    window_sizes: int | None | Sequence[int | None],
    hierarchical_stride: int | Sequence[int],
) -> tuple[Level, ...]:
    """The seed's per-hierarchy options (one value, or one per hierarchy) as
    checked ``Level``s; the finest level (it predicts) must have stride 1."""
    ks = hierarchies if isinstance(hierarchies, (tuple, list)) else (hierarchies,)
    ks = tuple(ks)
    check_int(**{f"hierarchies[{i}]": k for i, k in enumerate(ks)})
    check(len(ks) > 0 and min(ks) > 0, f"hierarchies must be > 0: {ks}")
    check(len(set(ks)) == len(ks), f"hierarchies must be distinct, got {ks}")
    options = dict(
        dim=dim, heads=heads, dim_head=dim_head, ff_mult=ff_mult,
        window=window_sizes, stride=hierarchical_stride,
    )  # fmt: skip
    seed_names = {"window": "window_sizes", "stride": "hierarchical_stride"}
    per = {
        key: _per_level(seed_names.get(key, key), value, len(ks))
        for key, value in options.items()
    }
    levels = tuple(
        Level(k, **{key: values[i] for key, values in per.items()})
        for i, k in enumerate(ks)
    )
    for level in levels:
        _check_level(level)
    finest = levels[ks.index(min(ks))]
    check(
        finest.stride == 1,
        f"the predicting hierarchy ({finest.factor}) needs hierarchical_stride 1",
    )
    return levels


class HierarchicalTransformer(Shell):
    """The ``simple-hierarchical-transformer`` API: ``model(ids)`` -> logits (b n v);
    ``model(ids, return_loss=True)`` -> (next-token loss, aux dict), and the
    shell's ``model.loss(ids, targets)``.

    ``dim``, ``dim_head``, ``heads``, ``ff_mult``, ``window_sizes`` and
    ``hierarchical_stride`` take one value or a tuple with one per hierarchy.
    Window ``None`` = full causal attention, ``0`` = token shift only. Inputs of
    any length <= ``seq_len`` work: they are right-padded to a multiple of every
    factor. ``use_flash_attn`` picks the fused SDPA path (else the plain one).
    The embedding has the widest level's width; the head reads the finest's.
    """

    def __init__(
        self,
        *,
        num_tokens: int,
        dim: int | tuple[int, ...],
        depth: int,
        seq_len: int = 2048,
        dim_head: int | tuple[int, ...] = 64,
        heads: int | tuple[int, ...] = 8,
        ff_mult: int | tuple[int, ...] = 4,
        hierarchies: int | tuple[int, ...] = 1,
        window_sizes: int | None | tuple[int | None, ...] = None,
        hierarchical_stride: int | tuple[int, ...] = 1,
        use_flash_attn: bool = True,
        ignore_index: int = -100,
    ) -> None:
        check_int(num_tokens=num_tokens, depth=depth, seq_len=seq_len)
        check_positive(num_tokens=num_tokens, depth=depth, seq_len=seq_len)
        levels = make_levels(
            hierarchies, dim=dim, dim_head=dim_head, heads=heads, ff_mult=ff_mult,
            window_sizes=window_sizes, hierarchical_stride=hierarchical_stride,
        )  # fmt: skip
        ks = tuple(level.factor for level in levels)
        predict = ks.index(min(ks))
        width = max(level.dim for level in levels)
        super().__init__(
            num_tokens, width, out_dim=levels[predict].dim, ignore_index=ignore_index
        )
        self.levels, self.hierarchies, self.predict = levels, ks, predict
        self.seq_len, self.multiple = seq_len, math.lcm(*ks)
        self.draw_in_order(lambda: self._build(depth, use_flash_attn))

    def _build(self, depth: int, fast: bool) -> None:
        levels, width = self.levels, self.embed.embedding_dim
        self.emb_norm = nn.LayerNorm(width)
        self.compressors = nn.ModuleList(
            Compress(width, lv.dim, lv.factor, lv.stride) for lv in levels
        )
        self.layers = nn.ModuleList(
            nn.ModuleList(
                HierarchicalBlock(
                    lv.dim,
                    heads=lv.heads,
                    dim_head=lv.dim_head,
                    window=lv.window,
                    ff_mult=lv.ff_mult,
                    groups=lv.factor // lv.stride,
                    fast=fast,
                )
                for lv in levels
            )
            for _ in range(depth)
        )
        dims = tuple(lv.dim for lv in levels)
        strides = tuple(lv.stride for lv in levels)
        self.merges = nn.ModuleList(
            HierarchicalMerge(dims, dims[self.predict], strides)
            for _ in range(depth if len(levels) > 1 else 0)
        )

    def forward(
        self, ids: Tensor, return_loss: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        if return_loss:  # the seed's protocol: predict ids[1:] from ids[:-1]
            loss = self.loss(ids[:, :-1], ids[:, 1:])
            return loss, {"cross_entropy": loss.detach()}
        check_ids(ids)
        n = ids.shape[1]
        check(n <= self.seq_len, f"ids length {n} exceeds seq_len {self.seq_len}")
        ids = F.pad(ids, (0, (-n) % self.multiple))  # the padding is in the future
        x = self.emb_norm(self.embed(ids))
        tokens = [compress(x) for compress in self.compressors]
        p = self.predict
        for i, blocks in enumerate(self.layers):
            level_blocks = cast(nn.ModuleList, blocks)  # one block per level
            tokens = [block(z) for block, z in zip(level_blocks, tokens)]
            if self.merges:
                tokens[p] = tokens[p] + self.merges[i](tokens, ids.shape[1])
        return self.logits(tokens[p])[:, :n]


def hierarchical_costs(levels: Sequence[Level], n: int) -> list[dict[str, Any]]:
    """The cost of one layer of a ``HierarchicalTransformer`` with these
    ``levels`` (``model.levels``) on n tokens, padded as the model pads them.

    One row per hierarchy, and one for the merge when there are several: tokens
    processed, parameters, and multiply-adds of the linear layers and of the
    attention scores (causal entries only: q.k and p.v, so 2 x entries x h x d).
    """
    check_int(n=n)
    check_positive(n=n)
    n = n + (-n) % math.lcm(*(lv.factor for lv in levels))
    rows: list[dict[str, Any]] = []
    for lv in levels:
        k, s, c, w = lv.factor, lv.stride, lv.dim, lv.window
        inner = lv.heads * lv.dim_head
        params = 2 * lv.ff_mult * c * c + (4 * inner * c if w != 0 else 0)
        span = n // k  # length of each of the k / s interleaved groups
        reach = span if w is None else w
        entries = (k // s) * sum(min(t + 1, reach) for t in range(span))
        macs = 2 * entries * inner if w != 0 else 0
        rows.append(
            {
                "hierarchy": k,
                "stride": s,
                "tokens": n // s,
                "params": params,
                "linear_macs": (n // s) * params,
                "attention_macs": macs,
            }
        )
    if len(levels) > 1:
        out = min(levels, key=lambda lv: lv.factor).dim
        coarse = sum((n // lv.stride) * lv.dim * 2 * out for lv in levels)
        rows.append(
            {
                "hierarchy": "merge",
                "stride": 1,
                "tokens": n,
                "params": sum(lv.dim for lv in levels) * 2 * out + 2 * out * out,
                "linear_macs": coarse + n * 2 * out * out,
                "attention_macs": 0,
            }
        )
    return rows
