"""The block-recurrent cell: one layer of a Block-Recurrent Transformer.

"Block-Recurrent Transformers" (Hutchins, Schlag, Wu, Dyer, Neyshabur, NeurIPS 2022,
arXiv:2203.07852). A sequence is cut into blocks of W tokens. Every layer attends
over a sliding window of W tokens: the current block and the cached keys/values of
the previous one (Transformer-XL memories, Dai et al., 2019, arXiv:1901.02860).
Recurrent layers also keep S state vectors c_t (b s c), carried from block to block::

    vertical   (tokens):  y = x + W_o [SelfAttn(x_t, [mem, x_t]) ; CrossAttn(x_t, c_t)]
    horizontal (states):  h = W_h [SelfAttn(c_t + ids, c_t + ids) ; CrossAttn(c_t, x_t)]
                          c' = Gate(c_t, h)                              ("skip" cell)
                          c_{t+1} = Gate2(c', MLP(LN(c')))   (``state_mlp``, "dual")
    fixed gate:           Gate(c, h) = c g + z (1 - g),  z = W_z h + b_z, g = σ(b_g)
    LSTM gate:            i = σ(W_i h + b_i - 1),  f = σ(W_f h + b_f + 1)
                          Gate(c, h) = c * f + tanh(W_z h + b_z) * i

The paper's full horizontal direction mirrors the vertical one with its residuals
replaced by gates: projection, gate, MLP, second gate. The authors' code (meliad,
``recurrent_skip_ffn``) can drop the MLP and its gate: the "skip" cell, which is
this module's default and what ``block-recurrent-transformer-pytorch`` builds;
``state_mlp=True`` gives the full ("dual") cell.

Keys and values are shared: the tokens' (from x_t) serve the window attention and
the states' cross-attention, the states' (from c_t) serve both state queries and
the tokens' cross-attention; four query sets, two key/value sets. Learned state IDs
are added to the normalized states (they have no positions). Token-token attention
uses rotary positions ("RoFormer", Su et al., 2021, arXiv:2104.09864) or a dynamic
position bias (an MLP of the distance, "CrossFormer", Wang et al., 2021,
arXiv:2108.00154; the paper used T5's relative bias). Options: single-head keys and
values ("Fast Transformer Decoding: One Write-Head is All You Need", Shazeer, 2019,
arXiv:1911.02150), and one block of compressed memories ("Compressive
Transformers", Rae et al., 2019, arXiv:1911.05507): the block that left the window,
compressed by a strided convolution (trained by the task loss only).

Every softmax is the book's one attention core (``minimodels.attention``):
``attention_sdpa`` (``fast``) or ``attention_naive``, with the window as a boolean
mask (``causal_mask(w, 2w, window=w)`` over [previous block, current block]),
the position bias as ``bias``, single-head keys and values broadcast to every
query head, and rotary embedding at the window's (float) positions.

Segments need not end on a block boundary. The memories then also hold the r
tokens of the unfinished block (their length is ``memory_len + r``, so r is
their length mod W) and the state is the one that block reads; the next call
finishes the block, so any split of a sequence gives the logits of one pass.

Shapes: b batch, n sequence, c model dim, h heads, k key/value heads (1 or h),
d head dim, t blocks, w block width, m keys of a block's window, s state vectors.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from minimodels._util import check, check_divides
from minimodels.attention import (
    RotaryEmbedding,
    attention_naive,
    attention_sdpa,
    causal_mask,
    split_heads,
)
from minimodels.lm import MLP

__all__ = [
    "window_mask",
    "DynamicPositionBias",
    "FixedGate",
    "LSTMGate",
    "BlockAttention",
]

Gate = Literal["fixed", "lstm"]


def window_mask(w: int, compressed: int = 0) -> Tensor:
    """(w, compressed + 2w): query i of a block sees every compressed slot and,
    of [previous block, current block], the window of the core's
    ``causal_mask(w, 2w, window=w)``: keys i < j <= i + w (W tokens)."""
    window = causal_mask(w, 2 * w, window=w)
    return torch.cat((torch.ones(w, compressed, dtype=torch.bool), window), dim=1)


class DynamicPositionBias(nn.Module):
    """Per-head bias from an MLP of the log-distance between query and key."""

    def __init__(self, heads: int, hidden: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(1, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, heads),
        )

    def forward(self, dist: Tensor) -> Tensor:  # dist: (n m) -> (h n m)
        x = dist.sign() * dist.abs().log1p()
        x = x.to(next(self.mlp.parameters()).dtype)
        return rearrange(self.mlp(x[..., None]), "n m h -> h n m")


class FixedGate(nn.Module):
    """c' = c g + z (1 - g) with z = W_z h + b_z and a learned constant g = σ(b_g)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.to_z = nn.Linear(dim, dim)
        self.b_g = nn.Parameter(torch.ones(dim))  # start near "keep" (g ≈ 0.73)

    def forward(self, c: Tensor, h: Tensor) -> Tensor:
        g = torch.sigmoid(self.b_g)
        return c * g + self.to_z(h) * (1 - g)


class LSTMGate(nn.Module):
    """c' = c f + tanh(z) i, with input gate bias -1 and forget gate bias +1."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.to_zif = nn.Linear(dim, 3 * dim)

    def forward(self, c: Tensor, h: Tensor) -> Tensor:
        z, i, f = self.to_zif(h).chunk(3, dim=-1)
        return c * torch.sigmoid(f + 1) + torch.tanh(z) * torch.sigmoid(i - 1)


def _gate(kind: Gate, dim: int) -> nn.Module:
    return FixedGate(dim) if kind == "fixed" else LSTMGate(dim)


class BlockAttention(nn.Module):
    """Sliding-window attention over [memory, block]; with ``num_state_vectors > 0``
    also the recurrent cell (vertical cross-attention, horizontal state update,
    with ``state_mlp`` the paper's MLP and second gate on the states)."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        dim_head: int,
        block_width: int,
        num_state_vectors: int = 0,
        single_head_kv: bool = False,
        dynamic_pos_bias: bool = False,
        compressed_mem_factor: int = 0,
        gate: Gate = "fixed",
        state_mlp: bool = False,
        ff_mult: int = 4,
        carry_states: bool = True,
        fast: bool = False,
    ) -> None:
        super().__init__()
        check(
            gate in ("fixed", "lstm"), f"gate must be 'fixed' or 'lstm', got {gate!r}"
        )
        self.heads, self.kv_heads = heads, 1 if single_head_kv else heads
        self.dim_head = dim_head
        self.w, self.c, self.fast = block_width, compressed_mem_factor, fast
        self.num_state_vectors, self.carry_states = num_state_vectors, carry_states
        inner, kv = heads * dim_head, self.kv_heads * dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * kv, bias=False)
        recurrent = num_state_vectors > 0
        self.to_out = nn.Linear(inner * (2 if recurrent else 1), dim, bias=False)
        self.rotary = None if dynamic_pos_bias else RotaryEmbedding(dim_head)
        self.pos_bias = DynamicPositionBias(heads) if dynamic_pos_bias else None
        if self.c:
            check_divides("compressed_mem_factor", self.c, "block_width", block_width)
            self.compress = nn.ModuleList(
                nn.Conv1d(dim_head, dim_head, self.c, stride=self.c) for _ in "kv"
            )
        self.state_mlp = recurrent and state_mlp
        if recurrent:
            s = num_state_vectors
            self.initial_state = nn.Parameter(torch.randn(s, dim) * dim**-0.5)
            self.state_ids = nn.Parameter(torch.randn(s, dim) * dim**-0.5)
            self.state_norm = nn.LayerNorm(dim)
            self.to_q_cross = nn.Linear(dim, inner, bias=False)  # tokens -> states
            self.state_to_q = nn.Linear(dim, 2 * inner, bias=False)  # self, cross
            self.state_to_kv = nn.Linear(dim, 2 * kv, bias=False)
            self.state_out = nn.Linear(2 * inner, dim, bias=False)
            self.gate = _gate(gate, dim)
        if self.state_mlp:
            self.mlp_norm, self.mlp = nn.LayerNorm(dim), MLP(dim, ff_mult)
            self.mlp_gate = _gate(gate, dim)

    @property
    def memory_len(self) -> int:
        """Cached tokens at a block boundary: one block, two with compression."""
        return 2 * self.w if self.c else self.w

    def _split(self, t: Tensor, heads: int) -> Tensor:
        return split_heads(t, heads, parts=1)[0]

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor,
        mask: Tensor | None = None, bias: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """The core's attention: SDPA with ``fast``, else the naive reference;
        k and v may have one head (broadcast to q's)."""
        attend = attention_sdpa if self.fast else attention_naive
        return attend(q, k, v, mask=mask, bias=bias)

    def _layout(self, kv: Tensor, m: int, r: int, t: int) -> tuple[Tensor, Tensor]:
        """[memory (m), new] keys and values (2 b k m+n d), whose last r + n
        tokens fill t blocks -> (2 b u k w d) with memory_len / w blocks in
        front of those t, and which slots hold a real token (u w)."""
        big_m, w, length = self.memory_len, self.w, kv.shape[3]
        left = big_m + r - m  # empty slots before the oldest memory
        full = F.pad(kv, (0, 0, left, big_m + t * w - left - length))
        i = torch.arange(full.shape[3], device=kv.device)
        valid = (i >= left) & (i < left + length)
        blocks = rearrange(full, "two b k (u w) d -> two b u k w d", w=w)
        return blocks, rearrange(valid, "(u w) -> u w", w=w)

    def _windows(self, blocks: Tensor, ok: Tensor, t: int) -> tuple[Tensor, Tensor]:
        """Keys and values of every block's window (2 b t k m d), validity (t m)."""
        u0 = self.memory_len // self.w
        keys = [blocks[:, :, u0 - 1 : u0 - 1 + t], blocks[:, :, u0:]]
        valid = [ok[u0 - 1 : u0 - 1 + t], ok[u0:]]
        if self.c:  # the block before the window, compressed c-fold
            old = blocks[:, :, u0 - 2 : u0 - 2 + t]
            b = old.shape[1]
            x = rearrange(old, "two b t k w d -> two (b t k) d w")
            x = torch.stack([conv(x[i]) for i, conv in enumerate(self.compress)])
            keys.insert(0, rearrange(x, "two (b t k) d s -> two b t k s d", b=b, t=t))
            old_ok = rearrange(ok[u0 - 2 : u0 - 2 + t], "t (s c) -> t s c", c=self.c)
            valid.insert(0, old_ok.all(-1))
        return torch.cat(keys, dim=4), torch.cat(valid, dim=1)

    def _positions(self, device: torch.device) -> tuple[Tensor, Tensor]:
        w, c = self.w, self.c
        off = w if c else 0
        slots = torch.arange(w // c if c else 0, device=device) * c + (c - 1) / 2
        k_pos = torch.cat((slots, torch.arange(2 * w, device=device) + off))
        return (torch.arange(w, device=device) + w + off).float(), k_pos.float()

    def _window_attention(self, qb: Tensor, kvb: Tensor, valid: Tensor) -> Tensor:
        """Token self-attention of every block at once: qb (b t h w d), kvb
        (2 b t k m d) -> (b t h w d)."""
        q_pos, k_pos = self._positions(qb.device)
        mask = window_mask(self.w, k_pos.numel() - 2 * self.w).to(qb.device)
        mask = (mask & valid[:, None, :])[:, None]  # (t 1 w m)
        kb, vb, bias = kvb[0], kvb[1], None
        if self.pos_bias is not None:
            bias = self.pos_bias(q_pos[:, None] - k_pos[None, :]).to(qb.dtype)
        elif self.rotary is not None:
            qb, kb = self.rotary(qb, q_pos), self.rotary(kb, k_pos)
        return self._attend(qb, kb, vb, mask=mask, bias=bias)

    def _state_qkv(self, states: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        s = self.state_norm(states) + self.state_ids  # learned state IDs
        q_self, q_cross = self.state_to_q(s).chunk(2, dim=-1)
        k, v = self.state_to_kv(s).chunk(2, dim=-1)
        h, kh = self.heads, self.kv_heads
        return (
            self._split(q_self, h),
            self._split(q_cross, h),
            self._split(k, kh),
            self._split(v, kh),
        )

    def _update(self, c: Tensor, h: Tensor) -> Tensor:
        """The states' gated projection, then (``state_mlp``) gated MLP."""
        c = self.gate(c, self.state_out(rearrange(h, "b h s e -> b s (h e)")))
        if self.state_mlp:
            c = self.mlp_gate(c, self.mlp(self.mlp_norm(c)))
        return c

    def _run_states(
        self, c0: Tensor, cur: Tensor, ok: Tensor, complete: int
    ) -> tuple[Tensor, Tensor]:
        """Horizontal direction, block by block: cur (2 b t k w d) holds each
        block's token keys/values, ok (t w) which are real. Returns the states'
        keys/values that each block reads (2 b t k s d) and the state after the
        ``complete`` whole blocks (an unfinished last block changes nothing)."""
        c, keys, values = c0, [], []
        for i in range(cur.shape[2]):
            q_self, q_cross, sk, sv = self._state_qkv(c)
            keys.append(sk)
            values.append(sv)
            if i >= complete:
                break
            kx, vx = cur[0, :, i], cur[1, :, i]
            h = torch.cat(
                (
                    self._attend(q_self, sk, sv),
                    self._attend(q_cross, kx, vx, mask=ok[i, None]),
                ),
                dim=-1,
            )
            c = self._update(c, h) if self.carry_states else c0
        return torch.stack((torch.stack(keys, 1), torch.stack(values, 1))), c

    def _blocks_of(self, t: Tensor, r: int, n_blocks: int) -> Tensor:
        """(b h n d) -> (b t h w d), r empty slots in front, padded at the end."""
        pad = n_blocks * self.w - r - t.shape[2]
        return rearrange(F.pad(t, (0, 0, r, pad)), "b h (t w) d -> b t h w d", w=self.w)

    def forward(
        self, x: Tensor, mem: Tensor | None = None, state: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """x: (b n c) (normalized), mem: (2 b k m d), state: (b s c) ->
        output (b n c), new memories (2 b k m' d), new state (b s c) or None."""
        b, n, _ = x.shape
        w, m = self.w, 0 if mem is None else mem.shape[3]
        r = m % w  # tokens of an unfinished block, at the end of the memory
        t = math.ceil((r + n) / w)
        q = self._blocks_of(self._split(self.to_q(x), self.heads), r, t)
        kv = torch.stack(split_heads(self.to_kv(x), self.kv_heads, parts=2))
        kv_all = kv if mem is None else torch.cat((mem, kv), dim=3)
        blocks, ok = self._layout(kv_all, m, r, t)
        out = self._window_attention(q, *self._windows(blocks, ok, t))
        new_state = None
        if self.num_state_vectors:
            c0 = self.initial_state.expand(b, -1, -1) if state is None else state
            u0 = self.memory_len // w
            skv, new_state = self._run_states(
                c0, blocks[:, :, u0:], ok[u0:], (r + n) // w
            )
            qc = self._blocks_of(self._split(self.to_q_cross(x), self.heads), r, t)
            cross = self._attend(qc, skv[0], skv[1])  # (b t h w d)
            out = torch.cat((out, cross), -1)
        out = rearrange(out, "b t h w e -> b (t w) (h e)")[:, r : r + n]
        keep = self.memory_len + (r + n) % w
        return self.to_out(out), kv_all[:, :, :, -keep:], new_state
