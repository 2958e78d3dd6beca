"""Sequence-parallel dilated attention == the single-process module, with 2 and 4
CPU processes (gloo on 127.0.0.1): outputs, input gradients, parameter gradients,
and the received volume == ``communication_volume``."""

import pytest
import torch
import torch.distributed as dist

from minimodels.dilated import DilatedAttention
from minimodels.dilated_parallel import (
    SequenceParallelDilatedAttention,
    check_parallel_layout,
    communication_volume,
    spawn,
)

# (segment_lengths, dilation_rates, causal, dedupe); n = 64 tokens in all cases.
CASES = [
    ((8, 16, 64), (1, 2, 4), True, False),  # local, spans 1-2 ranks, whole sequence
    ((4, 32), (1, 2), False, False),
    ((16, 128), (2, 8), True, True),  # w > n: one segment; shared keys once
    ((64,), (4,), False, False),
]
N, DIM, HEADS = 64, 16, 4


def _compare(rank: int, world: int) -> None:
    torch.manual_seed(0)
    for segs, rates, causal, dedupe in CASES:
        attn = DilatedAttention(
            DIM, HEADS, causal=causal, dedupe=dedupe, segment_lengths=segs,
            dilation_rates=rates,
        ).double()  # fmt: skip
        x = torch.randn(2, N, DIM, dtype=torch.float64, requires_grad=True)
        probe = torch.randn(2, N, DIM, dtype=torch.float64)
        (attn(x) * probe).sum().backward()
        want_out = attn(x).detach()
        want = {name: p.grad.clone() for name, p in attn.named_parameters()}
        attn.zero_grad()

        local = N // world
        sl = slice(rank * local, (rank + 1) * local)
        mine = x.detach()[:, sl].clone().requires_grad_(True)
        parallel = SequenceParallelDilatedAttention(attn)
        out = parallel(mine)
        (out * probe[:, sl]).sum().backward()
        torch.testing.assert_close(out, want_out[:, sl], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(mine.grad, x.grad[:, sl], rtol=1e-9, atol=1e-10)
        for name, p in attn.named_parameters():
            dist.all_reduce(p.grad)  # each rank holds its slice's share
            torch.testing.assert_close(p.grad, want[name], rtol=1e-9, atol=1e-10)
        volume = communication_volume(
            N, world, attn.branches, heads=HEADS, dim_head=DIM // HEADS, batch=2
        )
        assert parallel.received_elements == volume


@pytest.mark.parametrize("world", [2, 4])
def test_parallel_equals_single_process(world):
    spawn(_compare, world)


def test_communication_volume_is_independent_of_n():
    # Weak scaling: 4096 tokens per rank, branches w = 2048 * 2^k, r = 2^k up to N,
    # and as many heads as the largest rate (each head one residue per branch).
    per_head = []
    for world in (2, 8, 32, 128):
        n = 4096 * world
        branches = [(2048 * 2**k, 2**k) for k in range(n.bit_length() - 11)]
        check_parallel_layout(n, world, branches)
        heads = branches[-1][1]
        volume = communication_volume(n, world, branches, heads=heads, dim_head=1)
        per_head.append(volume / heads)
        # below 2 * 2048 rows (keys and values) per head and crossing branch
        assert 0 < per_head[-1] < 2 * 2048 * len(branches)
        # one head must take every residue itself: the dense (w - L) rows
        one = communication_volume(n, world, branches, heads=1, dim_head=1)
        assert one == sum(2 * (min(w, n) - 4096) for w, _ in branches if w > 4096)


def test_bad_layout_gives_clear_errors():
    with pytest.raises(ValueError, match="world_size"):
        check_parallel_layout(65, 2, [(8, 1)])
    with pytest.raises(ValueError, match="segment_length 12 must divide"):
        check_parallel_layout(64, 2, [(12, 1)])
    with pytest.raises(ValueError, match="dilation_rate 64 must divide"):
        check_parallel_layout(64, 2, [(64, 64)])
