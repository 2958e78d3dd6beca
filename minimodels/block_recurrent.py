"""Block recurrence: a transformer layer applied recurrently over blocks of tokens.

"Block-Recurrent Transformers" (Hutchins, Schlag, Wu, Dyer, Neyshabur, NeurIPS 2022,
arXiv:2203.07852). A sequence is cut into blocks of W tokens. Every layer attends
over a sliding window of W tokens: the current block and the cached keys/values of
the previous one (Transformer-XL memories, Dai et al., 2019, arXiv:1901.02860).
Recurrent layers also keep S state vectors c_t (b s c), carried from block to block::

    vertical   (tokens):  y = x + W_o [SelfAttn(x_t, [mem, x_t]) ; CrossAttn(x_t, c_t)]
    horizontal (states):  h = W_h [SelfAttn(c_t + ids, c_t + ids) ; CrossAttn(c_t, x_t)]
    fixed gate:           c_{t+1} = c_t * g + z * (1 - g),  z = W_z h + b_z, g = σ(b_g)
    LSTM gate:            i = σ(W_i h + b_i - 1),  f = σ(W_f h + b_f + 1)
                          c_{t+1} = c_t * f + tanh(W_z h + b_z) * i

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
compressed by a strided convolution (trained by the task loss only, without Rae's
auxiliary reconstruction loss).

The public API follows the seed package ``block-recurrent-transformer-pytorch``:
``out, mems, states = model(seq, xl_memories=mems, states=states)``.

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

from minimodels._util import check, check_divides, check_ndim, check_positive, default
from minimodels.attention import RotaryEmbedding
from minimodels.lm import MLP, init_embedding, sample_logits

__all__ = [
    "attend",
    "window_mask",
    "DynamicPositionBias",
    "FixedGate",
    "LSTMGate",
    "BlockAttention",
    "BlockRecurrentTransformer",
    "RecurrentTrainWrapper",
    "RecurrentTrainerWrapper",
    "BlockRecurrentLM",
    "distant_recall",
]

Gate = Literal["fixed", "lstm"]


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    fast: bool = False,
) -> Tensor:
    """Softmax attention. q: (b h n d), k and v: (b k m d) with k = 1 or h; mask
    (True = visible) and bias broadcast to (b h n m). ``fast`` uses SDPA."""
    k, v = k.expand(*q.shape[:2], *k.shape[2:]), v.expand(*q.shape[:2], *v.shape[2:])
    if fast:
        if bias is not None:
            neg = torch.finfo(q.dtype).min
            mask = bias if mask is None else bias.masked_fill(~mask, neg)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    s = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(q.shape[-1])
    if bias is not None:
        s = s + bias
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhnm,bhmd->bhnd", s.softmax(-1), v)


def window_mask(w: int, compressed: int = 0) -> Tensor:
    """(w, compressed + 2w): query i of a block sees every compressed slot and the
    keys j of [previous block, current block] with i < j <= i + w (W tokens)."""
    i, j = torch.arange(w)[:, None], torch.arange(2 * w)[None, :]
    window = (j > i) & (j <= i + w)
    return torch.cat((torch.ones(w, compressed, dtype=torch.bool), window), dim=1)


def _rotate(x: Tensor, pos: Tensor, inv_freq: Tensor) -> Tensor:
    """Rotary embedding at (float) positions pos: (n,), x: (... n d)."""
    angles = pos[:, None] * inv_freq[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)


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
        x = (dist.sign() * dist.abs().log1p()).to(self.mlp[0].weight.dtype)
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


class BlockAttention(nn.Module):
    """Sliding-window attention over [memory, block]; with ``num_state_vectors > 0``
    also the recurrent cell (vertical cross-attention, horizontal state update)."""

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
        carry_states: bool = True,
        fast: bool = False,
    ) -> None:
        super().__init__()
        check(
            gate in ("fixed", "lstm"), f"gate must be 'fixed' or 'lstm', got {gate!r}"
        )
        self.heads, self.kv_heads = heads, 1 if single_head_kv else heads
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
        if recurrent:
            s = num_state_vectors
            self.initial_state = nn.Parameter(torch.randn(s, dim) * dim**-0.5)
            self.state_ids = nn.Parameter(torch.randn(s, dim) * dim**-0.5)
            self.state_norm = nn.LayerNorm(dim)
            self.to_q_cross = nn.Linear(dim, inner, bias=False)  # tokens -> states
            self.state_to_q = nn.Linear(dim, 2 * inner, bias=False)  # self, cross
            self.state_to_kv = nn.Linear(dim, 2 * kv, bias=False)
            self.state_out = nn.Linear(2 * inner, dim, bias=False)
            self.gate = FixedGate(dim) if gate == "fixed" else LSTMGate(dim)

    @property
    def memory_len(self) -> int:
        return 2 * self.w if self.c else self.w

    def _split(self, t: Tensor, heads: int) -> Tensor:
        return rearrange(t, "b n (h d) -> b h n d", h=heads)

    def _windows(self, k: Tensor, mem: Tensor | None, n: int) -> tuple[Tensor, Tensor]:
        """Keys (or values) of every block's window: (b t k m d), validity (t m)."""
        w, big_m = self.w, self.memory_len
        mem = k[:, :, :0] if mem is None else mem
        t = math.ceil(n / w)
        full = F.pad(
            torch.cat((mem, k), dim=2), (0, 0, big_m - mem.shape[2], t * w - n)
        )
        valid = torch.arange(full.shape[2], device=k.device) >= big_m - mem.shape[2]
        kb = rearrange(full, "b k (u w) d -> b u k w d", w=w)
        vb = rearrange(valid, "(u w) -> u w", w=w)
        u0 = big_m // w
        keys = [kb[:, u0 - 1 : u0 - 1 + t], kb[:, u0:]]
        ok = [vb[u0 - 1 : u0 - 1 + t], vb[u0:]]
        if self.c:  # the block before the window, compressed c-fold
            old = kb[:, u0 - 2 : u0 - 2 + t]
            old_ok = vb[u0 - 2 : u0 - 2 + t]
            ok.insert(0, rearrange(old_ok, "t (s c) -> t s c", c=self.c).all(-1))
            keys.insert(0, old)
        return torch.cat(keys, dim=3), torch.cat(ok, dim=1)

    def _compress(self, kb: Tensor, which: int) -> Tensor:
        if not self.c:
            return kb
        old, rest = kb[..., : self.w, :], kb[..., self.w :, :]
        b, t = old.shape[:2]
        x = rearrange(old, "b t k w d -> (b t k) d w")
        x = rearrange(self.compress[which](x), "(b t k) d s -> b t k s d", b=b, t=t)
        return torch.cat((x, rest), dim=3)

    def _positions(self, device: torch.device) -> tuple[Tensor, Tensor]:
        w, c = self.w, self.c
        off = w if c else 0
        slots = torch.arange(w // c if c else 0, device=device) * c + (c - 1) / 2
        k_pos = torch.cat((slots, torch.arange(2 * w, device=device) + off))
        return torch.arange(w, device=device) + w + off, k_pos.float()

    def _window_attention(
        self, q: Tensor, k: Tensor, v: Tensor, mem: Tensor | None, n: int
    ) -> Tensor:
        """Token self-attention of every block at once: (b t h w d)."""
        mk, mv = (None, None) if mem is None else mem
        (kb, valid), (vb, _) = self._windows(k, mk, n), self._windows(v, mv, n)
        kb, vb = self._compress(kb, 0), self._compress(vb, 1)
        q_pos, k_pos = self._positions(q.device)
        mask = window_mask(self.w, k_pos.numel() - 2 * self.w).to(q.device)
        mask = mask & valid[:, None, :]  # (t w m)
        bias = None
        if self.rotary is not None:
            q = _rotate(q, q_pos.float(), self.rotary.inv_freq)
            kb = _rotate(kb, k_pos, self.rotary.inv_freq)
        else:
            bias = self.pos_bias(q_pos[:, None].float() - k_pos[None, :]).to(q.dtype)
        b, t = q.shape[:2]
        out = attend(
            q.flatten(0, 1),
            kb.flatten(0, 1),
            vb.flatten(0, 1),
            mask[:, None].repeat(b, 1, 1, 1),
            bias,
            fast=self.fast,
        )
        return rearrange(out, "(b t) h w d -> b t h w d", b=b)

    def _state_kv(self, states: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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

    def _run_states(
        self, c0: Tensor, k: Tensor, v: Tensor, n: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Horizontal direction, block by block: the states each block reads
        (their keys/values (b t k s d)) and the state after the last block."""
        w, t = self.w, math.ceil(n / self.w)
        pad = (0, 0, 0, t * w - n)
        kb = rearrange(F.pad(k, pad), "b k (t w) d -> t b k w d", w=w)
        vb = rearrange(F.pad(v, pad), "b k (t w) d -> t b k w d", w=w)
        real = rearrange(torch.arange(t * w, device=k.device) < n, "(t w) -> t w", w=w)
        c, keys, values = c0, [], []
        for i in range(t):
            q_self, q_cross, sk, sv = self._state_kv(c)
            keys.append(sk)
            values.append(sv)
            h = torch.cat(
                (
                    attend(q_self, sk, sv, fast=self.fast),
                    attend(q_cross, kb[i], vb[i], real[i, None], fast=self.fast),
                ),
                dim=-1,
            )
            c_next = self.gate(c, self.state_out(rearrange(h, "b h s e -> b s (h e)")))
            c = c_next if self.carry_states else c0
        return torch.stack(keys, 1), torch.stack(values, 1), c

    def forward(
        self, x: Tensor, mem: Tensor | None = None, state: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """x: (b n c) (normalized), mem: (2 b k m d), state: (b s c) ->
        output (b n c), new memories (2 b k m' d), new state (b s c) or None."""
        b, n, _ = x.shape
        w, t = self.w, math.ceil(x.shape[1] / self.w)
        q = self._split(self.to_q(x), self.heads)
        k, v = (self._split(z, self.kv_heads) for z in self.to_kv(x).chunk(2, -1))
        blocks = "b h (t w) d -> b t h w d"
        qb = rearrange(F.pad(q, (0, 0, 0, t * w - n)), blocks, w=w)
        out = self._window_attention(qb, k, v, mem, n)
        new_state = None
        if self.num_state_vectors:
            c0 = self.initial_state.expand(b, -1, -1) if state is None else state
            sk, sv, new_state = self._run_states(c0, k, v, n)
            qc = rearrange(
                F.pad(
                    self._split(self.to_q_cross(x), self.heads), (0, 0, 0, t * w - n)
                ),
                blocks,
                w=w,
            )
            cross = attend(
                qc.flatten(0, 1), sk.flatten(0, 1), sv.flatten(0, 1), fast=self.fast
            )
            out = torch.cat(
                (out, rearrange(cross, "(b t) h w d -> b t h w d", b=b)), -1
            )
        out = rearrange(out, "b t h w e -> b (t w) (h e)")[:, :n]
        kv = torch.stack((k, v))
        new_mem = kv if mem is None else torch.cat((mem, kv), dim=3)
        return self.to_out(out), new_mem[:, :, :, -self.memory_len :], new_state


class BlockRecurrentTransformer(nn.Module):
    """Pre-norm transformer whose every layer attends over a sliding window of
    ``block_width`` tokens (with cached memories) and whose ``recurrent_layers``
    (1-based) also carry ``num_state_vectors`` states from block to block.

    ``model(seq, xl_memories, states)`` takes up to ``max_seq_len`` tokens (any
    length, a last partial block included) and returns logits (or, with
    ``return_loss``, the next-token loss), the memories of every layer
    (2 b k m d) and the states of every recurrent layer (b s c). Memories and
    states come back detached unless ``detach=False``. ``carry_states=False``
    switches the recurrence off: every block reads the learned initial state.
    """

    def __init__(
        self,
        *,
        num_tokens: int,
        dim: int,
        depth: int,
        dim_head: int = 64,
        heads: int = 8,
        max_seq_len: int = 1024,
        block_width: int = 512,
        num_state_vectors: int | None = None,
        recurrent_layers: tuple[int, ...] | None = None,
        use_compressed_mem: bool = False,
        compressed_mem_factor: int = 4,
        use_flash_attn: bool = False,
        single_head_kv: bool = False,
        dynamic_pos_bias: bool = False,
        gate: Gate = "fixed",
        ff_mult: int = 4,
        carry_states: bool = True,
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        check_positive(num_tokens=num_tokens, dim=dim, depth=depth, heads=heads)
        check_positive(dim_head=dim_head, block_width=block_width)
        check_divides("block_width", block_width, "max_seq_len", max_seq_len)
        num_state_vectors = default(num_state_vectors, block_width)
        check_positive(num_state_vectors=num_state_vectors)
        recurrent_layers = default(recurrent_layers, (max(depth // 2, 1),))
        check(
            all(0 < i <= depth for i in recurrent_layers),
            f"recurrent_layers must lie in 1..depth ({depth}), got {recurrent_layers}",
        )
        self.max_seq_len, self.block_width = max_seq_len, block_width
        self.recurrent_layers = tuple(sorted(set(recurrent_layers)))
        self.ignore_index, self.dim = ignore_index, dim
        self.embed = nn.Embedding(num_tokens, dim)
        self.attn_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.attns = nn.ModuleList(
            BlockAttention(
                dim,
                heads=heads,
                dim_head=dim_head,
                block_width=block_width,
                num_state_vectors=num_state_vectors if i in recurrent_layers else 0,
                single_head_kv=single_head_kv,
                dynamic_pos_bias=dynamic_pos_bias,
                compressed_mem_factor=compressed_mem_factor
                if use_compressed_mem
                else 0,
                gate=gate,
                carry_states=carry_states,
                fast=use_flash_attn,
            )
            for i in range(1, depth + 1)
        )
        self.ff_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.ffs = nn.ModuleList(MLP(dim, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens, bias=False)
        init_embedding(self.embed)

    def _check_memories(self, mems: list[Tensor], b: int) -> None:
        check(
            len(mems) == len(self.attns),
            f"xl_memories must hold one tensor per layer ({len(self.attns)}), "
            f"got {len(mems)}",
        )
        for i, (m, attn) in enumerate(zip(mems, self.attns)):
            check_ndim(f"xl_memories[{i}]", m, 5, "2 b k m d")
            d = attn.to_q.out_features // attn.heads
            check(
                m.shape[:3] == (2, b, attn.kv_heads)
                and m.shape[4] == d
                and m.shape[3] <= attn.memory_len,
                f"xl_memories[{i}] must have shape (2, {b}, {attn.kv_heads}, "
                f"m <= {attn.memory_len}, {d}), got {tuple(m.shape)}",
            )

    def _check_states(self, states: list[Tensor], b: int) -> None:
        r = len(self.recurrent_layers)
        check(
            len(states) == r,
            f"states must hold one tensor per recurrent layer ({r}), got {len(states)}",
        )
        s = self.attns[self.recurrent_layers[0] - 1].num_state_vectors if r else 0
        for i, st in enumerate(states):
            check(
                tuple(st.shape) == (b, s, self.dim),
                f"states[{i}] must have shape ({b}, {s}, {self.dim}) (b s c), "
                f"got {tuple(st.shape)}",
            )

    def forward(
        self,
        seq: Tensor,
        xl_memories: list[Tensor] | None = None,
        states: list[Tensor] | None = None,
        *,
        return_loss: bool = False,
        detach: bool = True,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """seq: (b n) ids -> logits (b n v) or loss, memories, states."""
        check_ndim("seq", seq, 2, "b n")
        if return_loss:
            seq, labels = seq[:, :-1], seq[:, 1:]
        b, n = seq.shape
        check(n > 0, "seq must hold at least one token (two with return_loss)")
        check(
            n <= self.max_seq_len,
            f"seq length ({n}) must be <= max_seq_len ({self.max_seq_len}); use "
            "RecurrentTrainWrapper for longer sequences",
        )
        mems, states = list(xl_memories or []), list(states or [])
        if mems:
            self._check_memories(mems, b)
        if states:
            self._check_states(states, b)
        x, new_mems, new_states, state_iter = self.embed(seq), [], [], iter(states)
        for i, attn in enumerate(self.attns):
            state = next(state_iter, None) if attn.num_state_vectors else None
            y, mem, state = attn(
                self.attn_norms[i](x), mems[i] if mems else None, state
            )
            x = x + y
            x = x + self.ffs[i](self.ff_norms[i](x))
            new_mems.append(mem.detach() if detach else mem)
            if state is not None:
                new_states.append(state.detach() if detach else state)
        logits = self.to_logits(self.norm(x))
        if not return_loss:
            return logits, new_mems, new_states
        loss = F.cross_entropy(
            logits.flatten(0, 1), labels.flatten(), ignore_index=self.ignore_index
        )
        return loss, new_mems, new_states


class RecurrentTrainWrapper(nn.Module):
    """Runs a long sequence through the model segment by segment (``segment_len``
    tokens, default ``max_seq_len``), carrying memories and states.

    Gradients flow through every block of a segment; memories and states are
    detached every ``truncate_every`` segments (truncated backpropagation through
    time, as in the paper; ``None`` never detaches). ``xl_memories_dropout`` and
    ``state_dropout`` drop them before a segment with that probability in training.
    ``forward(seq)`` returns the mean next-token loss over the whole sequence.
    """

    def __init__(
        self,
        transformer: BlockRecurrentTransformer,
        *,
        segment_len: int | None = None,
        truncate_every: int | None = 1,
        xl_memories_dropout: float = 0.0,
        state_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.segment_len = default(segment_len, transformer.max_seq_len)
        w = transformer.block_width
        check_divides("block_width", w, "segment_len", self.segment_len)
        check(
            self.segment_len <= transformer.max_seq_len,
            f"segment_len ({self.segment_len}) must be <= max_seq_len "
            f"({transformer.max_seq_len})",
        )
        check(
            truncate_every is None or truncate_every > 0,
            f"truncate_every must be positive or None, got {truncate_every}",
        )
        for name, p in (
            ("xl_memories_dropout", xl_memories_dropout),
            ("state_dropout", state_dropout),
        ):
            check(0 <= p <= 1, f"{name} must be in [0, 1], got {p}")
        self.truncate_every = truncate_every
        self.xl_memories_dropout, self.state_dropout = (
            xl_memories_dropout,
            state_dropout,
        )

    def logits(
        self,
        seq: Tensor,
        xl_memories: list[Tensor] | None = None,
        states: list[Tensor] | None = None,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """seq: (b n) of any length -> logits (b n v), memories, states."""
        check_ndim("seq", seq, 2, "b n")
        mems, states, out = list(xl_memories or []), list(states or []), []
        for i, chunk in enumerate(seq.split(self.segment_len, dim=1)):
            if self.training and torch.rand(()) < self.xl_memories_dropout:
                mems = []
            if self.training and torch.rand(()) < self.state_dropout:
                states = []
            logits, mems, states = self.transformer(chunk, mems, states, detach=False)
            out.append(logits)
            if self.truncate_every is not None and (i + 1) % self.truncate_every == 0:
                mems, states = [m.detach() for m in mems], [s.detach() for s in states]
        return torch.cat(out, dim=1), mems, states

    def forward(
        self, seq: Tensor, *, return_memories_and_states: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor], list[Tensor]]:
        """Mean next-token loss of seq (b n), n >= 2."""
        check(seq.ndim == 2 and seq.shape[1] >= 2, "seq must be (b n) with n >= 2")
        logits, mems, states = self.logits(seq[:, :-1])
        loss = F.cross_entropy(
            logits.flatten(0, 1),
            seq[:, 1:].flatten(),
            ignore_index=self.transformer.ignore_index,
        )
        return (loss, mems, states) if return_memories_and_states else loss

    @torch.no_grad()
    def generate(
        self,
        prime: Tensor,
        length: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Continue prime (b n) up to ``length`` tokens in all; returns the
        ``length - n`` new ones. The cache holds the memories and states at the
        last block boundary; each new token reruns only the current block."""
        check_ndim("prime", prime, 2, "b n")
        n, w = prime.shape[1], self.transformer.block_width
        check(0 < n < length, f"length ({length}) must exceed the prime's ({n})")
        was_training = self.training
        self.eval()
        done = (n - 1) // w * w  # whole blocks go into the cache; 1..w tokens stay
        _, mems, states = self.logits(prime[:, :done]) if done else (None, [], [])
        block, out = prime[:, done:], []
        for _ in range(length - n):
            logits, new_mems, new_states = self.transformer(block, mems, states)
            token = sample_logits(logits[:, -1], temperature, top_k, generator)[:, None]
            out.append(token)
            if block.shape[1] == w:  # the block is complete: advance the cache
                mems, states, block = new_mems, new_states, token
            else:
                block = torch.cat((block, token), dim=1)
        self.train(was_training)
        return torch.cat(out, dim=1)


RecurrentTrainerWrapper = RecurrentTrainWrapper  # the seed package's spelling


class BlockRecurrentLM(nn.Module):
    """ids (b n) of any length -> logits (b n v), for ``minimodels.train``."""

    def __init__(self, wrapper: RecurrentTrainWrapper) -> None:
        super().__init__()
        self.wrapper = wrapper

    def forward(self, ids: Tensor) -> Tensor:
        return self.wrapper.logits(ids)[0]


def distant_recall(
    num_examples: int,
    *,
    block_width: int,
    gap_blocks: int,
    num_pairs: int = 4,
    num_keys: int = 16,
    num_values: int = 16,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Key-value recall whose answers lie ``gap_blocks`` blocks back.

    Block 0 holds ``num_pairs`` pairs ``k v`` (distinct keys) then noise; then come
    ``gap_blocks`` blocks of noise; the last block is noise then every key once,
    in a new order, each to be answered with its value (its target; -100
    elsewhere). Tokens: keys [0, K), values [K, K+V), noise K+V.
    Returns (x, y) of shape (N, (gap_blocks + 2) * block_width).
    """
    check_positive(num_examples=num_examples, num_pairs=num_pairs)
    check(gap_blocks >= 0, f"gap_blocks must be >= 0, got {gap_blocks}")
    check(2 * num_pairs <= block_width, "2 * num_pairs must be <= block_width")
    check(num_pairs <= num_keys, f"num_pairs must be <= num_keys ({num_keys})")
    g = torch.Generator().manual_seed(seed)
    n, w, noise = num_examples, block_width, num_keys + num_values
    keys = torch.rand(n, num_keys, generator=g).argsort(-1)[:, :num_pairs]
    values = torch.randint(num_keys, noise, (n, num_pairs), generator=g)
    x = torch.full((n, (gap_blocks + 2) * w), noise, dtype=torch.long)
    x[:, : 2 * num_pairs] = torch.stack((keys, values), -1).flatten(1)
    order = torch.rand(n, num_pairs, generator=g).argsort(-1)
    x[:, -num_pairs:] = keys.gather(1, order)
    y = torch.full_like(x, -100)
    y[:, -num_pairs:] = values.gather(1, order)
    return x, y
