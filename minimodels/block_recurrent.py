"""Block-Recurrent Transformer: the model, its segment-by-segment wrapper, a task.

"Block-Recurrent Transformers" (Hutchins, Schlag, Wu, Dyer, Neyshabur, NeurIPS 2022,
arXiv:2203.07852). The recurrent cell (window attention, state cross-attention,
gated state update) lives in ``minimodels.block_recurrent_cell`` and is re-exported
here; this module stacks it into a pre-norm transformer, runs long sequences
segment by segment with truncated backpropagation through time, samples from it,
and builds ``distant_recall``, a task whose answers lie beyond every window.

The public API follows the seed package ``block-recurrent-transformer-pytorch``:
``out, mems, states = model(seq, xl_memories=mems, states=states)``, exact for
segments of any length (a segment may end inside a block).

Shapes: b batch, n sequence, c model dim, k key/value heads, d head dim,
m cached tokens, s state vectors.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimodels._util import check, check_divides, check_ndim, check_positive, default
from minimodels.block_recurrent_cell import (
    BlockAttention,
    FixedGate,
    Gate,
    LSTMGate,
)
from minimodels.lm import MLP, Shell, check_sampling, sample_logits

__all__ = [
    "BlockRecurrentTransformer",
    "RecurrentTrainWrapper",
    "RecurrentTrainerWrapper",
    "BlockRecurrentLM",
    "BlockAttention",
    "FixedGate",
    "LSTMGate",
]


def _next_token_loss(logits: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
    """Mean cross-entropy of logits (b n v) against targets (b n)."""
    return F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index
    )


class BlockRecurrentTransformer(Shell):
    """Pre-norm transformer whose every layer attends over a sliding window of
    ``block_width`` tokens (with cached memories) and whose ``recurrent_layers``
    (1-based) also carry ``num_state_vectors`` states from block to block.

    ``model(seq, xl_memories, states)`` takes up to ``max_seq_len`` tokens (any
    length, a last partial block included) and returns logits (or, with
    ``return_loss``, the next-token loss), the memories of every layer
    (2 b k m d) and the states of every recurrent layer (b s c). Memories and
    states come back detached unless ``detach=False``. Feeding them back
    continues the sequence exactly, wherever the segment ended.
    ``carry_states=False`` switches the recurrence off: every block reads the
    learned initial state. ``state_mlp=True`` gives the paper's full cell (an
    MLP and a second gate on the states); the default is the "skip" cell.

    Embedding, final norm, head and ``loss(ids, targets)`` (the book's one loss
    protocol, for ids of any length) come from ``lm.Shell``.
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
        state_mlp: bool = False,
        ff_mult: int = 4,
        carry_states: bool = True,
        ignore_index: int = -100,
    ) -> None:
        check_positive(num_tokens=num_tokens, dim=dim, depth=depth, heads=heads)
        check_positive(dim_head=dim_head, block_width=block_width)
        check_divides("block_width", block_width, "max_seq_len", max_seq_len)
        num_state_vectors = default(num_state_vectors, block_width)
        check_positive(num_state_vectors=num_state_vectors, ff_mult=ff_mult)
        if use_compressed_mem:
            check_positive(compressed_mem_factor=compressed_mem_factor)
        recurrent_layers = default(recurrent_layers, (max(depth // 2, 1),))
        check(
            all(0 < i <= depth for i in recurrent_layers),
            f"recurrent_layers must lie in 1..depth ({depth}), got {recurrent_layers}",
        )
        super().__init__(num_tokens, dim, ignore_index=ignore_index)
        self.max_seq_len, self.block_width = max_seq_len, block_width
        self.recurrent_layers = tuple(sorted(set(recurrent_layers)))
        self.dim = dim

        def build() -> None:
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
                    state_mlp=state_mlp,
                    ff_mult=ff_mult,
                    carry_states=carry_states,
                    fast=use_flash_attn,
                )
                for i in range(1, depth + 1)
            )
            self.ff_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
            self.ffs = nn.ModuleList(MLP(dim, ff_mult) for _ in range(depth))

        self.draw_in_order(build)

    def _layers(self) -> list[BlockAttention]:
        return [cast(BlockAttention, attn) for attn in self.attns]

    def _check_memories(self, mems: list[Tensor], b: int) -> None:
        check(
            len(mems) == len(self.attns),
            f"xl_memories must hold one tensor per layer ({len(self.attns)}), "
            f"got {len(mems)}",
        )
        for i, (m, attn) in enumerate(zip(mems, self._layers())):
            check_ndim(f"xl_memories[{i}]", m, 5, "2 b k m d")
            d, limit = attn.dim_head, attn.memory_len + attn.w
            check(
                m.shape[:3] == (2, b, attn.kv_heads)
                and m.shape[4] == d
                and m.shape[3] < limit,
                f"xl_memories[{i}] must have shape (2, {b}, {attn.kv_heads}, "
                f"m < {limit}, {d}), got {tuple(m.shape)}",
            )
        check(
            len({m.shape[3] % self.block_width for m in mems}) == 1,
            "xl_memories must all end at the same position in a block, got "
            f"lengths {[m.shape[3] for m in mems]}",
        )

    def _check_states(self, states: list[Tensor], b: int) -> None:
        r = len(self.recurrent_layers)
        check(
            len(states) == r,
            f"states must hold one tensor per recurrent layer ({r}), got {len(states)}",
        )
        s = self._layers()[self.recurrent_layers[0] - 1].num_state_vectors if r else 0
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
        logits = self.logits(x)
        if not return_loss:
            return logits, new_mems, new_states
        return _next_token_loss(logits, labels, self.ignore_index), new_mems, new_states

    def loss(self, ids: Tensor, targets: Tensor) -> Tensor:
        """The one loss protocol: cross-entropy of ids (b n) of any length against
        targets (b n), skipping ``ignore_index``; run in segments of max_seq_len
        with memories and states carried (``RecurrentTrainWrapper``'s defaults)."""
        check(
            targets.shape == ids.shape,
            f"targets must have the shape of ids {tuple(ids.shape)}, "
            f"got {tuple(targets.shape)}",
        )
        logits = RecurrentTrainWrapper(self).logits(ids)[0]
        return _next_token_loss(logits, targets, self.ignore_index)


class RecurrentTrainWrapper(nn.Module):
    """Runs a long sequence through the model segment by segment (``segment_len``
    tokens, default ``max_seq_len``, any length), carrying memories and states.

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
        check_positive(segment_len=self.segment_len)
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
        loss = _next_token_loss(logits, seq[:, 1:], self.transformer.ignore_index)
        return (loss, mems, states) if return_memories_and_states else loss

    @torch.no_grad()
    def generate(
        self, prime: Tensor, length: int, *, temperature: float = 1.0,
        top_k: int | None = None, generator: torch.Generator | None = None,
    ) -> Tensor:  # fmt: skip
        """Continue prime (b n) up to ``length`` tokens in all; returns the
        ``length - n`` new ones. Each new token is one more call of the model
        with the cached memories and states (exact, as a segment may end
        inside a block), which recomputes one block's attention."""
        check_ndim("prime", prime, 2, "b n")
        check_sampling(temperature, top_k)
        n = prime.shape[1]
        check(0 < n < length, f"length ({length}) must exceed the prime's ({n})")
        was_training = self.training
        self.eval()
        logits, mems, states = self.logits(prime)
        out = []
        for i in range(length - n):
            token = sample_logits(logits[:, -1], temperature, top_k, generator)
            out.append(token[:, None])
            if i + 1 < length - n:
                logits, mems, states = self.transformer(token[:, None], mems, states)
        self.train(was_training)
        return torch.cat(out, dim=1)


RecurrentTrainerWrapper = RecurrentTrainWrapper  # the seed package's spelling


class BlockRecurrentLM(nn.Module):
    """The loss protocol's ``lm(ids) -> logits (b n v)``, ids of any length, for
    ``minimodels.train``: the seed's ``model(seq)`` returns (logits, memories,
    states), so the protocol's call goes through the wrapper. ``lm.loss(ids,
    targets)`` is the model's."""

    def __init__(self, wrapper: RecurrentTrainWrapper) -> None:
        super().__init__()
        self.wrapper = wrapper

    def forward(self, ids: Tensor) -> Tensor:
        return self.wrapper.logits(ids)[0]

    def loss(self, ids: Tensor, targets: Tensor) -> Tensor:
        return self.wrapper.transformer.loss(ids, targets)
