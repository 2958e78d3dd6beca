"""Sequence parallelism for dilated attention: LongNet's distributed algorithm.

"LongNet: Scaling Transformers to 1,000,000,000 Tokens" (Ding et al., 2023,
arXiv:2307.02486), section 3.1. The sequence of N tokens is split across P ranks,
L = N / P tokens each; every rank projects its own slice to Q, K, V. For a branch
(w, r):

- w <= L: segments lie inside one rank, attention is local, nothing is sent;
- w > L: a segment spans g = w / L ranks. Each rank sparsifies its own keys and
  values first (L / r rows per head), then all-gathers them inside its segment's
  group of g ranks (eq. 11-12):

      K~ = [K~_1, ..., K~_g],   V~ = [V~_1, ..., V~_g],   O~ = softmax(Q~ K~^T) V~,

  so a rank receives (g - 1) L / r = (w - L) / r rows per head, which for the
  geometric sequences w_k = w_0 a^k, r_k = a^k is at most w_0 rows per branch,
  whatever N is, when there are at least r heads. A head that must take
  several offsets (fewer heads than r, ``minimodels.dilated.head_slots``)
  receives that many times more. The backward of the all-gather sums every
  rank's gradient for a block and hands it back to the block's owner
  (reduce-scatter; all-reduce and slice with gloo, which has no reduce-scatter).

The outputs of the branches are mixed locally by their log-sum-exp exactly as in
``minimodels.dilated``; the result on each rank equals the single-process output
on its slice (tested with 2 and 4 processes).

Launch with ``torchrun --nproc-per-node 2 -m minimodels.dilated_parallel`` (a
self-check) or, in tests, ``spawn(fn, world_size)`` (loopback, a free port).

Shapes: b batch, h heads, n = N sequence, l = L slice per rank, d head dim,
c model dim, m rows kept per rank (L / r).
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from minimodels._util import check, check_ndim
from minimodels.dilated import (
    Branch,
    DilatedAttention,
    attend_sparse,
    combine_branches,
    dedupe_bias,
    dilated_branch,
    effective_segment,
    expand_slots,
    fold_slots,
    kept_positions,
    scatter_back,
    sparsify,
)

__all__ = [
    "gather_segments",
    "communication_volume",
    "check_parallel_layout",
    "SequenceParallelDilatedAttention",
    "free_port",
    "spawn",
]


class _GatherSegments(torch.autograd.Function):
    """All-gather along the row axis (dim 3); backward: sum, then each its block."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        world = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.group, ctx.world, ctx.rank = group, world, dist.get_rank(group)
        return torch.cat(parts, dim=3)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        blocks = grad.chunk(ctx.world, dim=3)
        if dist.get_backend(ctx.group) == "nccl":
            out = torch.empty_like(blocks[0].contiguous())
            stacked = torch.cat([blk.contiguous() for blk in blocks], dim=0)
            dist.reduce_scatter_tensor(out, stacked, group=ctx.group)
            return out, None
        total = grad.contiguous()
        dist.all_reduce(total, group=ctx.group)  # gloo: no reduce-scatter
        return total.chunk(ctx.world, dim=3)[ctx.rank].contiguous(), None


def gather_segments(x: Tensor, group: Any = None) -> Tensor:
    """(b h 1 m d) on each rank -> (b h 1 g*m d), the group's blocks in rank order."""
    return _GatherSegments.apply(x, group)


def check_parallel_layout(n: int, world_size: int, branches: Sequence[Branch]) -> None:
    """Segments must line up with the ranks' slices (errors name the argument)."""
    check(n % world_size == 0, f"sequence length {n} must divide by world_size "
          f"{world_size}")  # fmt: skip
    local = n // world_size
    for w, r in branches:
        w = effective_segment(w, r, n)
        if w <= local:
            check(local % w == 0, f"segment_length {w} must divide the slice {local}")
            continue
        check(local % r == 0, f"dilation_rate {r} must divide the slice {local}")
        check(w % local == 0, f"the slice {local} must divide segment_length {w}")
        spans = w // local
        check(world_size % spans == 0, f"segment_length {w} spans {spans} "
              f"slices, which must divide world_size {world_size}")  # fmt: skip


def communication_volume(
    n: int,
    world_size: int,
    branches: Sequence[Branch],
    *,
    heads: int,
    dim_head: int,
    batch: int = 1,
) -> int:
    """Elements one rank receives in the forward: keys and values of the other
    g - 1 ranks of its segment group, after dilation, for every branch w > L."""
    local = n // world_size
    total = 0
    for w, r in branches:
        w = effective_segment(w, r, n)
        if w > local:
            rows = max(heads, r) * (local // r)  # heads < r: all r residues (slots)
            total += 2 * batch * rows * dim_head * (w // local - 1)
    return total


class SequenceParallelDilatedAttention(nn.Module):
    """Run a ``DilatedAttention`` on this rank's slice x (b l c) -> (b l c).

    Every rank of the default process group calls it with its own consecutive
    slice (rank 0 the first). ``received_elements`` counts what the forward
    passes have received so far.
    """

    def __init__(self, attn: DilatedAttention) -> None:
        super().__init__()
        self.attn = attn
        self._groups: dict[int, Any] = {}
        self.received_elements = 0

    def _group(self, size: int) -> Any:
        """The process group of consecutive ``size`` ranks holding this rank."""
        world, rank = dist.get_world_size(), dist.get_rank()
        if size == world:
            return None
        if size not in self._groups:  # every rank creates every group, in order
            groups = [
                dist.new_group(list(range(i, i + size))) for i in range(0, world, size)
            ]
            self._groups[size] = groups[rank // size]
        return self._groups[size]

    def _branch(
        self, q: Tensor, k: Tensor, v: Tensor, w: int, r: int, n: int
    ) -> tuple[Tensor, Tensor]:
        attn, (_, h, local, d) = self.attn, q.shape
        start, scale = dist.get_rank() * local, 1.0 / math.sqrt(d)
        dedupe = attn.branches if attn.dedupe else None
        w = effective_segment(w, r, n)
        if w <= local:  # segments inside this slice: no communication
            return dilated_branch(
                q, k, v, w, r, causal=attn.causal, scale=scale,
                dedupe_over=dedupe, start=start, n_total=n,
            )  # fmt: skip
        g = w // local
        first = start - (dist.get_rank() % g) * local  # first position of the group
        q, k, v = (expand_slots(t, r) for t in (q, k, v))  # (b u l d), u slots
        u = q.shape[1]
        q_pos = kept_positions(u, 1, local, r, start, q.device)  # (u 1 m)
        k_pos = kept_positions(u, g, local, r, first, q.device).flatten(1)[:, None]
        qs, ks, vs = (sparsify(t, local, r) for t in (q, k, v))  # (b h 1 m d)
        group = self._group(g)
        ks, vs = gather_segments(ks, group), gather_segments(vs, group)
        self.received_elements += 2 * (g - 1) * qs.numel()
        bias = None
        if dedupe is not None:
            bias = dedupe_bias(q_pos, k_pos, dedupe, n, h, q.dtype)
        o, lse = attend_sparse(
            qs, ks, vs, q_pos, k_pos, n=n, causal=attn.causal, scale=scale, bias=bias
        )
        o = scatter_back(o, r)
        lse = scatter_back(lse[..., None], r, float("-inf"))[..., 0]
        return fold_slots(o, lse, h, r)

    def forward(self, x: Tensor) -> Tensor:  # x: (b l c), this rank's slice
        check_ndim("x", x, 3, "b l c")
        check(dist.is_initialized(), "torch.distributed is not initialized")
        world, local = dist.get_world_size(), x.shape[1]
        n = world * local
        check_parallel_layout(n, world, self.attn.branches)
        q, k, v = self.attn.qkv(x, offset=dist.get_rank() * local)
        outs, lses = zip(
            *(self._branch(q, k, v, w, r, n) for w, r in self.attn.branches)
        )
        return self.attn.out(combine_branches(outs, lses))


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, fn: Callable[..., None], world: int, port: int, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = (
        "nccl"
        if torch.cuda.is_available() and bool(args) and args[-1] == "cuda"
        else "gloo"
    )
    torch.set_num_threads(1)  # world_size processes share the cores
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn(
    fn: Callable[..., None], world_size: int, *args: Any, start_method: str = "fork"
) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes joined by
    a gloo group on 127.0.0.1 (nccl when the last arg is "cuda"); an error in any
    rank raises here. "fork" starts in a fraction of a second (no re-import of
    torch); use "spawn" with CUDA, and then ``fn`` must be importable."""
    port = free_port()
    mp.start_processes(
        _entry, args=(fn, world_size, port, args), nprocs=world_size, join=True,
        start_method=start_method,
    )  # fmt: skip


def self_check(rank: int, world: int, device: str = "cpu") -> float:
    """Parallel == single-process on a small random problem; returns max error."""
    torch.manual_seed(0)
    attn = DilatedAttention(
        32, heads=4, segment_lengths=(8, 32, 128), dilation_rates=(1, 2, 4)
    ).to(device)
    x = torch.randn(2, 128, 32, device=device)
    local = x.shape[1] // world
    mine = x[:, rank * local : (rank + 1) * local]
    with torch.no_grad():
        want = attn(x)[:, rank * local : (rank + 1) * local]
        got = SequenceParallelDilatedAttention(attn)(mine)
    return (got - want).abs().max().item()


def main() -> None:  # torchrun --nproc-per-node 2 -m minimodels.dilated_parallel
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{rank % torch.cuda.device_count()}" if backend == "nccl" else "cpu"
    err = self_check(rank, world, device)
    print(f"rank {rank}/{world}: max |parallel - single| = {err:.2e}")
    dist.destroy_process_group()
    check(err < 1e-4, f"rank {rank}: parallel and single-process differ by {err}")


if __name__ == "__main__":
    main()
