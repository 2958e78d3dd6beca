"""LongNet's whole model, as the seed package (``longnet``) builds it.

"LongNet: Scaling Transformers to 1,000,000,000 Tokens" (Ding, Ma, Dong, Zhang,
Huang, Wang, Zheng, Wei, 2023, arXiv:2307.02486) replaces the attention of a
Transformer by dilated attention (``minimodels.dilated``). The seed README's
``LongNetTransformer`` is "dilated transformer blocks with feedforwards with
layernorm, SwiGLU and parallel transformer blocks": each block adds attention
and a SwiGLU feed-forward of the same normalized input,

    x <- x + DilatedAttention(LN(x)) + SwiGLU(LN(x)),

as GPT-J and PaLM do, rather than ``lm.Block``'s sequential pre-norm pair. The
embedding, final norm and head are ``lm.Shell``'s. No chapter trains it: the
book's dilated language model (chapter 6) is ``lm.LM`` with the dilated mixer.

Shapes: b batch, n sequence, c model dim, v vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from minimodels._util import check, check_int, check_ndim, check_positive
from minimodels.dilated import DilatedAttention
from minimodels.lm import Shell

__all__ = ["SwiGLU", "ParallelBlock", "LongNetTransformer"]


class SwiGLU(nn.Module):
    """Feed-forward with a SiLU-gated linear unit ("GLU Variants Improve
    Transformer", Shazeer, 2020, arXiv:2002.05202): W_2 (silu(x W_g) * x W_1)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        check_positive(dim=dim, ff_mult=mult)
        self.proj_in = nn.Linear(dim, 2 * mult * dim, bias=False)
        self.proj_out = nn.Linear(mult * dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(a * F.silu(gate))


class ParallelBlock(nn.Module):
    """x + Attn(LN(x)) + FF(LN(x)): attention and feed-forward side by side."""

    def __init__(self, dim: int, attn: DilatedAttention, ff_mult: int) -> None:
        super().__init__()
        self.norm, self.attn, self.ff = nn.LayerNorm(dim), attn, SwiGLU(dim, ff_mult)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(x)
        return x + self.attn(y) + self.ff(y)


class LongNetTransformer(Shell):
    """The seed README's model: embedding, ``depth`` parallel blocks of dilated
    attention and SwiGLU feed-forward, norm, head; ``model(ids)`` -> logits
    (b n v), ``model.loss(ids, targets)``."""

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        depth: int,
        *,
        segment_lengths: Sequence[int] = (64, 128, 256),
        dilation_rates: Sequence[int] = (1, 2, 4),
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: int = 4,
        qk_norm: bool = False,
        causal: bool = True,
    ) -> None:
        check_int(num_tokens=num_tokens, dim=dim, depth=depth)
        check_positive(num_tokens=num_tokens, dim=dim, depth=depth)
        super().__init__(num_tokens, dim)

        def attention() -> DilatedAttention:
            return DilatedAttention(
                dim, heads, qk_norm=qk_norm, causal=causal, dim_head=dim_head,
                segment_lengths=segment_lengths, dilation_rates=dilation_rates,
            )  # fmt: skip

        self.blocks = nn.ModuleList(
            ParallelBlock(dim, attention(), ff_mult) for _ in range(depth)
        )

    def forward(self, ids: Tensor) -> Tensor:  # ids: (b n) -> logits (b n v)
        check_ndim("ids", ids, 2, "b n")
        check(ids.shape[1] > 0, "ids is an empty sequence (n = 0)")
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.logits(x)
