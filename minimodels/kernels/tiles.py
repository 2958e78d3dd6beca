"""What the Triton kernels here are built from: tiles in, tiles out, and which tiles.

In a kernel (``@triton.jit`` helpers, inlined where they are called): a block of
rows of a (rows, d) matrix loaded or stored through one masked helper, with
offsets in int64 (a tensor may hold more than 2^31 elements); a pointer moved to
one (batch, head); a tile product accumulated in fp32.

The schedule of an end-aligned causal mask (query i sees key j <= i + m - n) over
(query block, key block) tiles: which tiles a program skips, runs unmasked or
masks, from both sides (a program per query block, or per key block), and
``block_plan``, which reports it for every tile.

On the host: where a kernel can run (a CUDA tensor, or any tensor under Triton's
interpreter, ``TRITON_INTERPRET=1`` set before Triton is imported), the dtype it
computes in (bf16 becomes fp32 under the interpreter, whose bf16 ``tl.dot`` is
wrong), inputs with unit-stride rows, and outputs with the strides of their inputs.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from minimodels._util import check, check_positive

__all__ = ["dot", "tile_ptrs", "load", "store", "head", "key_ranges", "query_ranges",
           "visible", "block_plan", "interpreted", "check_device", "compute_dtype",
           "prepare", "like"]  # fmt: skip


# --- In a kernel: tiles in and out ------------------------------------------------


@triton.jit
def dot(a, b, IEEE: tl.constexpr):
    """a @ b accumulated in fp32; exact fp32 (no TF32) when IEEE is set."""
    if IEEE:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def tile_ptrs(ptr, rows, stride, n_rows, offs_d, HEAD_DIM: tl.constexpr):
    """Pointers to rows ``rows`` of a (n_rows, HEAD_DIM) matrix, and the mask of
    the ones that exist (padded rows and head-dim columns load 0, store nothing).
    Offsets in int64: a tensor may hold more than 2^31 elements."""
    ptrs = ptr + rows[:, None].to(tl.int64) * stride + offs_d[None, :]
    return ptrs, (rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM)


@triton.jit
def load(ptr, rows, stride, n_rows, offs_d, HEAD_DIM: tl.constexpr):
    ptrs, mask = tile_ptrs(ptr, rows, stride, n_rows, offs_d, HEAD_DIM)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def store(ptr, x, rows, stride, n_rows, offs_d, HEAD_DIM: tl.constexpr):
    ptrs, mask = tile_ptrs(ptr, rows, stride, n_rows, offs_d, HEAD_DIM)
    tl.store(ptrs, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def head(P, bh, H, s):
    """P moved to head h of batch b, for program bh = b * H + h (int64), through
    its strides s = (batch, head, row)."""
    return P + (bh // H) * s[0] + (bh % H) * s[1]


# --- The causal tile schedule ----------------------------------------------------


@triton.jit
def key_ranges(start_m, N, M, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr):  # fmt: skip
    """For query rows start_m..start_m+BLOCK_M: key blocks [0, free) need no mask,
    [free, hi) need one, keys >= hi are hidden from every row (skipped)."""
    full = M // BLOCK_N * BLOCK_N  # keys before the ragged last block
    if CAUSAL:
        shift = M - N  # end-aligned: row i sees key j <= i + shift
        hi = tl.minimum(tl.maximum(start_m + BLOCK_M + shift, 0), M)
        free = tl.maximum(start_m + shift + 1, 0) // BLOCK_N * BLOCK_N
        free = tl.minimum(tl.minimum(free, full), hi)
    else:
        free, hi = full, M
    return free, hi


@triton.jit
def query_ranges(start_n, N, M, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr):  # fmt: skip
    """For keys start_n..start_n+BLOCK_N: query blocks before lo see none of them
    (skipped), [lo, free) need the causal mask, [free, N) see them all."""
    if CAUSAL:
        shift = M - N
        lo = tl.maximum(start_n - shift, 0) // BLOCK_M * BLOCK_M
        free = tl.maximum(start_n + BLOCK_N - 1 - shift + BLOCK_M - 1, 0)
        free = tl.minimum(tl.maximum(free // BLOCK_M * BLOCK_M, lo), N)
    else:
        lo, free = 0, 0
    return lo, free


@triton.jit
def visible(rows, cols, N, M, CAUSAL: tl.constexpr):
    """(rows, cols) mask: key j exists and, if causal, j <= i + M - N (end-aligned)."""
    mask = cols[None, :] < M
    if CAUSAL:
        mask = mask & (cols[None, :] <= rows[:, None] + M - N)
    return mask


@triton.jit
def _plan_kernel(
    FREE, HI, LO, FREE_Q, N, M,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
):  # fmt: skip
    """The ranges of program i of the forward (and dQ) and of the dK/dV kernel."""
    i = tl.program_id(0)
    free, hi = key_ranges(i * BLOCK_M, N, M, BLOCK_M, BLOCK_N, CAUSAL)
    lo, free_q = query_ranges(i * BLOCK_N, N, M, BLOCK_M, BLOCK_N, CAUSAL)
    tl.store(FREE + i, free)
    tl.store(HI + i, hi)
    tl.store(LO + i, lo)
    tl.store(FREE_Q + i, free_q)


def block_plan(
    n: int, m: int, causal: bool, *, block_m: int = 64, block_n: int = 64
) -> tuple[Tensor, Tensor]:
    """How the kernels visit the (query block, key block) tiles, from the kernels'
    own range functions: 0 skipped, 1 no mask, 2 masked. Returns the plan of a
    program per query block (FlashAttention's forward and dQ kernels), and that of
    a program per key block (its dK/dV kernel). Chapter 5, step 4."""
    check_positive(n=n, m=m, block_m=block_m, block_n=block_n)
    rows, cols = triton.cdiv(n, block_m), triton.cdiv(m, block_n)
    device = "cpu" if interpreted() else "cuda"
    out = torch.zeros(4, max(rows, cols), dtype=torch.int32, device=device)
    _plan_kernel[(max(rows, cols),)](*out, n, m, block_m, block_n, bool(causal))
    free, hi, lo, free_q = (t[:, None] for t in out.long().cpu())
    i = torch.arange(rows)[:, None] * block_m  # first row of each query block
    j = torch.arange(cols)[None, :] * block_n  # first key of each key block
    by_rows = torch.where(j < free[:rows], 1, torch.where(j < hi[:rows], 2, 0))
    lo, free_q = lo[:cols].T, free_q[:cols].T
    by_cols = torch.where(i < lo, 0, torch.where(i < free_q, 2, 1))
    return by_rows, by_cols


# --- On the host: where a kernel runs, in which dtype, on which layout -------------


def interpreted() -> bool:
    """Whether kernels run in Triton's interpreter (on CPU tensors, with NumPy)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(*tensors: Tensor) -> None:
    """A kernel runs on CUDA tensors, or on any tensor under the interpreter."""
    check(
        all(t.is_cuda for t in tensors) or interpreted(),
        "CPU tensors need TRITON_INTERPRET=1 set before importing triton",
    )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels run in: bf16 becomes fp32 under the interpreter."""
    return torch.float32 if dtype == torch.bfloat16 and interpreted() else dtype


def prepare(*tensors: Tensor) -> list[Tensor]:
    """Inputs in the compute dtype, each row contiguous (the kernels step by 1)."""
    out = [t.to(compute_dtype(t.dtype)) for t in tensors]
    return [t if t.stride(-1) == 1 else t.contiguous() for t in out]


def like(t: Tensor) -> tuple[Tensor, Tensor]:
    """t and an empty tensor with the same strides (t made contiguous if needed:
    an expanded or overlapping t has no output of its strides)."""
    out = torch.empty_like(t)
    if out.stride() != t.stride():
        t = t.contiguous()
        out = torch.empty_like(t)
    return t, out
