"""FlashAttention in Triton, grown in the steps that chapter 5 shows one at a time.

"FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness" (Dao,
Fu, Ermon, Rudra, Re, 2022, arXiv:2205.14135) and "FlashAttention-2: Faster
Attention with Better Parallelism and Work Partitioning" (Dao, 2023,
arXiv:2307.08691). The forward is FA2's Algorithm 1, the backward its Algorithm 2:

    forward, per query block Q_i and key blocks K_j, V_j (scores in base 2):
        S = Q_i K_j^T * scale * log2(e)
        m' = max(m, rowmax(S)),  P = 2^(S - m'),  alpha = 2^(m - m')
        l = alpha l + rowsum(P),  acc = alpha acc + P V_j
        O_i = acc / l,  LSE_i = (m + log2 l) * ln 2
    backward, with D = rowsum(dO * O) and P recomputed as exp(S - LSE):
        dV_j += P^T dO_i,  dS = P * (dO_i V_j^T - D),
        dK_j += scale dS^T Q_i,  dQ_i += scale dS K_j

Steps: 1 ``flash_forward_block``, one query block of one head against all keys;
2 ``flash_forward``, a grid over (query block, batch x head) writing the LSE;
3 its causal mask, end-aligned (query i sees key j <= i + m - n); 4 ``block_plan``,
the tiles each program skips, runs unmasked or masks; 5 ``flash_backward``, D,
then a dK/dV kernel (a program per key block) and a dQ kernel (one per query
block); 6 ``flash_attention``, autotuned on a GPU, in an autograd Function.

Head dims up to 128 are padded to a power of two (>= 16); any length works (the
ragged last block is masked); offsets are int64. fp16 and bf16 accumulate in fp32,
fp32 uses IEEE dots (not TF32). Under the interpreter (TRITON_INTERPRET=1, CPU)
bf16 is computed in fp32: the interpreter's bf16 ``tl.dot`` is wrong.

Shapes: b batch, h heads, n query length, m key length, d head dim.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from minimodels._util import check, check_positive, default
from minimodels.attention import _check_qkv

__all__ = [
    "flash_forward_block",
    "flash_forward",
    "block_plan",
    "flash_backward",
    "compute_dtype",
    "FlashAttention",
    "flash_attention",
]

LOG2E = 1.4426950408889634  # exp(x) = 2^(x log2 e): exp2 is the GPU's native op
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(math.log(2))
MAX_HEAD_DIM = 128


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b accumulated in fp32; exact fp32 (no TF32) when IEEE is set."""
    if IEEE:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _tile_ptrs(ptr, rows, stride, n_rows, offs_d, HEAD_DIM: tl.constexpr):
    """Pointers to rows ``rows`` of a (n_rows, HEAD_DIM) matrix, and the mask of
    the ones that exist (padded rows and head-dim columns load 0, store nothing).
    Offsets in int64: a tensor may hold more than 2^31 elements."""
    ptrs = ptr + rows[:, None].to(tl.int64) * stride + offs_d[None, :]
    return ptrs, (rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM)


@triton.jit
def _load(ptr, rows, stride, n_rows, offs_d, HEAD_DIM: tl.constexpr):
    ptrs, mask = _tile_ptrs(ptr, rows, stride, n_rows, offs_d, HEAD_DIM)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _store(ptr, x, rows, stride, n_rows, offs_d, HEAD_DIM: tl.constexpr):
    ptrs, mask = _tile_ptrs(ptr, rows, stride, n_rows, offs_d, HEAD_DIM)
    tl.store(ptrs, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _head(P, bh, H, stride_b, stride_h):
    """P moved to head h of batch b, for program bh = b * H + h (int64)."""
    return P + (bh // H) * stride_b + (bh % H) * stride_h


# --- Step 1: one query block against all keys ------------------------------------


@triton.jit
def _fwd_block_kernel(
    Q, K, V, O, stride_q, stride_k, stride_v, stride_o, N, M, scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n, offs_d = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    q = _load(Q, rows, stride_q, N, offs_d, HEAD_DIM)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j0 in range(0, M, BLOCK_N):
        cols = j0 + offs_n
        k = _load(K, cols, stride_k, M, offs_d, HEAD_DIM)
        v = _load(V, cols, stride_v, M, offs_d, HEAD_DIM)
        s = _dot(q, tl.trans(k), IEEE) * scale_log2
        s = tl.where(cols[None, :] < M, s, float("-inf"))  # ragged last key block
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = alpha * l_i + tl.sum(p, 1)
        acc = alpha[:, None] * acc + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    _store(O, acc / l_i[:, None], rows, stride_o, N, offs_d, HEAD_DIM)


# --- Steps 2-4: batch x heads and the LSE, the causal mask, the block plan ---------


@triton.jit
def _key_ranges(start_m, N, M, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
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
def _query_ranges(start_n, N, M, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
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
def _visible(rows, cols, N, M, CAUSAL: tl.constexpr):
    """(rows, cols) mask: key j exists and, if causal, j <= i + M - N (end-aligned)."""
    visible = cols[None, :] < M
    if CAUSAL:
        visible = visible & (cols[None, :] <= rows[:, None] + M - N)
    return visible


@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q, K, V, stride_kn, stride_vn, lo, hi, rows, M, scale_log2,
    offs_n, offs_d, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr, N,
):  # fmt: skip
    """Key blocks lo..hi, with the causal and ragged-end masks only if MASKED."""
    for j0 in range(lo, hi, BLOCK_N):
        cols = j0 + offs_n
        k = _load(K, cols, stride_kn, M, offs_d, HEAD_DIM)
        v = _load(V, cols, stride_vn, M, offs_d, HEAD_DIM)
        s = _dot(q, tl.trans(k), IEEE) * scale_log2
        if MASKED:
            s = tl.where(_visible(rows, cols, N, M, CAUSAL), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED:  # a row that sees no key yet: exp2(-inf - 0) = 0, not nan
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_use = m_new
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = alpha * l_i + tl.sum(p, 1)
        acc = alpha[:, None] * acc + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE,  # q, o: (b h n d), k, v: (b h m d), lse: (b h n) fp32
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    H, N, M, scale_log2, N_BUCKET, M_BUCKET,  # buckets: the autotune key only
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    Q = _head(Q, bh, H, stride_qb, stride_qh)
    O = _head(O, bh, H, stride_ob, stride_oh)
    K = _head(K, bh, H, stride_kb, stride_kh)
    V = _head(V, bh, H, stride_vb, stride_vh)
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n, offs_d = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    q = _load(Q, rows, stride_qn, N, offs_d, HEAD_DIM)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    free, hi = _key_ranges(start_m, N, M, BLOCK_M, BLOCK_N, CAUSAL)
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, K, V, stride_kn, stride_vn, 0, free, rows, M, scale_log2,
        offs_n, offs_d, HEAD_DIM, BLOCK_N, False, CAUSAL, IEEE, N,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, K, V, stride_kn, stride_vn, free, hi, rows, M, scale_log2,
        offs_n, offs_d, HEAD_DIM, BLOCK_N, True, CAUSAL, IEEE, N,
    )  # fmt: skip
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # l = 0: the row sees no key ...
    tl.store(LSE + bh * N + rows, (m_i + tl.log2(l_safe)) * _LN2, mask=rows < N)
    _store(O, acc / l_safe[:, None], rows, stride_on, N, offs_d, HEAD_DIM)  # ... 0


@triton.jit
def _plan_kernel(
    FREE, HI, LO, FREE_Q, N, M,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
):  # fmt: skip
    """The ranges of program i of the forward (and dQ) and of the dK/dV kernel."""
    i = tl.program_id(0)
    free, hi = _key_ranges(i * BLOCK_M, N, M, BLOCK_M, BLOCK_N, CAUSAL)
    lo, free_q = _query_ranges(i * BLOCK_N, N, M, BLOCK_M, BLOCK_N, CAUSAL)
    tl.store(FREE + i, free)
    tl.store(HI + i, hi)
    tl.store(LO + i, lo)
    tl.store(FREE_Q + i, free_q)


# --- Step 5: the backward ----------------------------------------------------------


@triton.jit
def _bwd_preprocess(
    O, DO, DELTA, stride_ob, stride_oh, stride_on, stride_db, stride_dh, stride_dn,
    H, N, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """D_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij, one fp32 per query row."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load(_head(O, bh, H, stride_ob, stride_oh), rows, stride_on, N, offs_d,
              HEAD_DIM)  # fmt: skip
    do = _load(_head(DO, bh, H, stride_db, stride_dh), rows, stride_dn, N, offs_d,
               HEAD_DIM)  # fmt: skip
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh * N + rows, delta, mask=rows < N)


@triton.jit
def _row_stats(LSE, DELTA, rows, N):
    """The saved LSE (in base 2, +inf where a row sees no key, so P = 0) and D."""
    lse = tl.load(LSE + rows, mask=rows < N, other=0.0)
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * _LOG2E
    return lse, tl.load(DELTA + rows, mask=rows < N, other=0.0)


@triton.jit
def _bwd_dkdv_inner(
    dk, dv, k, v, Q, DO, LSE, DELTA, stride_qn, stride_dn, lo, hi, cols, N, M,
    scale_log2, offs_m, offs_d,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    """Query blocks lo..hi against one key block: four tile products each."""
    for i0 in range(lo, hi, BLOCK_M):
        rows = i0 + offs_m
        q = _load(Q, rows, stride_qn, N, offs_d, HEAD_DIM)  # rows >= N: zeros, so
        do = _load(DO, rows, stride_dn, N, offs_d, HEAD_DIM)  # they add nothing
        lse, delta = _row_stats(LSE, DELTA, rows, N)
        p_t = tl.exp2(_dot(k, tl.trans(q), IEEE) * scale_log2 - lse[None, :])  # (j i)
        if MASKED:  # the transposed tile (j i) of the causal mask
            p_t = tl.where(tl.trans(_visible(rows, cols, N, M, True)), p_t, 0.0)
        dv += _dot(p_t.to(do.dtype), do, IEEE)
        ds_t = p_t * (_dot(v, tl.trans(do), IEEE) - delta[None, :])
        dk += _dot(ds_t.to(q.dtype), q, IEEE)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA,  # dk, dv: strides of k, v (b h m d)
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_db, stride_dh, stride_dn,
    H, N, M, scale, scale_log2, N_BUCKET, M_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One program per key block: loop over the query blocks that see it."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1).to(tl.int64)
    Q = _head(Q, bh, H, stride_qb, stride_qh)
    DO = _head(DO, bh, H, stride_db, stride_dh)
    K = _head(K, bh, H, stride_kb, stride_kh)
    DK = _head(DK, bh, H, stride_kb, stride_kh)
    V = _head(V, bh, H, stride_vb, stride_vh)
    DV = _head(DV, bh, H, stride_vb, stride_vh)
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_m, offs_d = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D)
    k = _load(K, cols, stride_kn, M, offs_d, HEAD_DIM)
    v = _load(V, cols, stride_vn, M, offs_d, HEAD_DIM)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo, free = _query_ranges(start_n, N, M, BLOCK_M, BLOCK_N, CAUSAL)
    LSE, DELTA = LSE + bh * N, DELTA + bh * N
    dk, dv = _bwd_dkdv_inner(
        dk, dv, k, v, Q, DO, LSE, DELTA, stride_qn, stride_dn, lo, free, cols, N, M,
        scale_log2, offs_m, offs_d, HEAD_DIM, BLOCK_M, True, IEEE,
    )  # fmt: skip
    dk, dv = _bwd_dkdv_inner(
        dk, dv, k, v, Q, DO, LSE, DELTA, stride_qn, stride_dn, free, N, cols, N, M,
        scale_log2, offs_m, offs_d, HEAD_DIM, BLOCK_M, False, IEEE,
    )  # fmt: skip
    _store(DK, dk * scale, cols, stride_kn, M, offs_d, HEAD_DIM)
    _store(DV, dv, cols, stride_vn, M, offs_d, HEAD_DIM)


@triton.jit
def _bwd_dq_inner(
    dq, q, do, lse, delta, K, V, stride_kn, stride_vn, lo, hi, rows, N, M,
    scale_log2, offs_n, offs_d,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Key blocks lo..hi against one query block: three tile products each."""
    for j0 in range(lo, hi, BLOCK_N):
        cols = j0 + offs_n
        k = _load(K, cols, stride_kn, M, offs_d, HEAD_DIM)
        v = _load(V, cols, stride_vn, M, offs_d, HEAD_DIM)
        p = tl.exp2(_dot(q, tl.trans(k), IEEE) * scale_log2 - lse[:, None])
        if MASKED:
            p = tl.where(_visible(rows, cols, N, M, CAUSAL), p, 0.0)
        ds = p * (_dot(do, tl.trans(v), IEEE) - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, IEEE)
    return dq


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA,  # dq: strides of q (b h n d)
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_db, stride_dh, stride_dn,
    H, N, M, scale, scale_log2, N_BUCKET, M_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One program per query block: loop over the key blocks it sees."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    Q = _head(Q, bh, H, stride_qb, stride_qh)
    DQ = _head(DQ, bh, H, stride_qb, stride_qh)
    K = _head(K, bh, H, stride_kb, stride_kh)
    V = _head(V, bh, H, stride_vb, stride_vh)
    DO = _head(DO, bh, H, stride_db, stride_dh)
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n, offs_d = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    q = _load(Q, rows, stride_qn, N, offs_d, HEAD_DIM)
    do = _load(DO, rows, stride_dn, N, offs_d, HEAD_DIM)
    lse, delta = _row_stats(LSE + bh * N, DELTA + bh * N, rows, N)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    free, hi = _key_ranges(start_m, N, M, BLOCK_M, BLOCK_N, CAUSAL)
    dq = _bwd_dq_inner(
        dq, q, do, lse, delta, K, V, stride_kn, stride_vn, 0, free, rows, N, M,
        scale_log2, offs_n, offs_d, HEAD_DIM, BLOCK_N, False, CAUSAL, IEEE,
    )  # fmt: skip
    dq = _bwd_dq_inner(
        dq, q, do, lse, delta, K, V, stride_kn, stride_vn, free, hi, rows, N, M,
        scale_log2, offs_n, offs_d, HEAD_DIM, BLOCK_N, True, CAUSAL, IEEE,
    )  # fmt: skip
    _store(DQ, dq * scale, rows, stride_qn, N, offs_d, HEAD_DIM)


# --- Step 6: autotuning, and an autograd Function ---------------------------------


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


TUNE_KEY = ["N_BUCKET", "M_BUCKET", "HEAD_DIM", "CAUSAL"]


def _autotune(kernel, pairs: list[tuple[int, int]]):  # noqa: ANN202
    """``kernel`` tuned over 4 block shapes x warps (4, 8) x stages (2, 3, 4), keyed
    on the lengths rounded up to a power of two: a new length re-tunes the 24
    configurations only when it starts a new bucket (1000 tunes, 1024 reuses)."""
    configs = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn in pairs
        for w in (4, 8)
        for s in (2, 3, 4)
    ]
    return triton.autotune(configs, TUNE_KEY)(kernel)


_fwd_tuned = _autotune(_fwd_kernel, [(64, 64), (128, 32), (128, 64), (128, 128)])
_dkdv_tuned = _autotune(_bwd_dkdv_kernel, [(32, 64), (32, 128), (64, 64), (64, 128)])
_dq_tuned = _autotune(_bwd_dq_kernel, [(64, 32), (128, 32), (64, 64), (128, 64)])
FIXED_BLOCKS = 64  # without a GPU to time on (the interpreter): one configuration


def _choose(plain, tuned, block_m: int | None, block_n: int | None):  # noqa: ANN202
    """The autotuned kernel (GPU, no block sizes given) or a fixed configuration."""
    if block_m is None and block_n is None and torch.cuda.is_available():
        if not _interpreted():
            return tuned, {}
    block_m, block_n = default(block_m, FIXED_BLOCKS), default(block_n, FIXED_BLOCKS)
    check_positive(block_m=block_m, block_n=block_n)
    return plain, {"BLOCK_M": block_m, "BLOCK_N": block_n}


def _check_flash(q: Tensor, k: Tensor, v: Tensor) -> None:
    _check_qkv(q, k, v)
    check(
        q.dtype in (torch.float16, torch.bfloat16, torch.float32),
        f"q, k, v must be float16, bfloat16 or float32, got {q.dtype}",
    )
    check(k.shape[-1] == v.shape[-1], f"v must have the head dim of k, {k.shape[-1]}")
    d = q.shape[-1]
    check(1 <= d <= MAX_HEAD_DIM, f"head dim must be in 1..{MAX_HEAD_DIM}, got {d}")
    check(q.device == k.device == v.device, "q, k, v must be on the same device")
    check(
        q.is_cuda or _interpreted(),
        "CPU tensors need TRITON_INTERPRET=1 set before importing triton",
    )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels run in: bf16 becomes fp32 under the interpreter."""
    return torch.float32 if dtype == torch.bfloat16 and _interpreted() else dtype


def _prepare(*tensors: Tensor) -> list[Tensor]:
    """Inputs in the compute dtype, each row contiguous (the kernels step by 1)."""
    out = [t.to(compute_dtype(t.dtype)) for t in tensors]
    return [t if t.stride(-1) == 1 else t.contiguous() for t in out]


def _like(t: Tensor) -> tuple[Tensor, Tensor]:
    """t and an empty tensor with the same strides (t made contiguous if needed)."""
    out = torch.empty_like(t)
    if out.stride() != t.stride():
        t = t.contiguous()
        out = torch.empty_like(t)
    return t, out


def _strides(t: Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _meta(q: Tensor, causal: bool) -> dict:
    d = q.shape[-1]
    return {"HEAD_DIM": d, "BLOCK_D": max(16, triton.next_power_of_2(d)),
            "CAUSAL": bool(causal), "IEEE": q.dtype == torch.float32}  # fmt: skip


def _buckets(n: int, m: int) -> tuple[int, int]:
    return triton.next_power_of_2(n), triton.next_power_of_2(m)


def flash_forward_block(
    q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, *,
    block_m: int = 64, block_n: int = 64,
) -> Tensor:  # fmt: skip
    """Step 1: one head, non-causal. q: (n d), k and v: (m d) -> (n d)."""
    check(q.ndim == k.ndim == v.ndim == 2, "step 1 takes one head: (n d), (m d)")
    check_positive(block_m=block_m, block_n=block_n)
    _check_flash(q[None, None], k[None, None], v[None, None])
    dtype, (q, k, v) = q.dtype, _prepare(q, k, v)
    (n, d), m = q.shape, k.shape[0]
    meta, o = _meta(q, False), torch.empty_like(q)
    _fwd_block_kernel[(triton.cdiv(n, block_m),)](
        q, k, v, o, q.stride(0), k.stride(0), v.stride(0), o.stride(0), n, m,
        default(scale, 1.0 / math.sqrt(d)) * LOG2E, HEAD_DIM=d,
        BLOCK_D=meta["BLOCK_D"], BLOCK_M=block_m, BLOCK_N=block_n, IEEE=meta["IEEE"],
    )  # fmt: skip
    return o.to(dtype)


def flash_forward(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
    scale: float | None = None, *, block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Steps 2-4: q (b h n d), k and v (b h m d) -> o (b h n d), lse (b h n) fp32.
    Without block sizes: autotuned on a GPU (step 6), 64 x 64 otherwise."""
    kernel, config = _choose(_fwd_kernel, _fwd_tuned, block_m, block_n)
    _check_flash(q, k, v)
    dtype, (q, k, v) = q.dtype, _prepare(q, k, v)
    (b, h, n, d), m = q.shape, k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty(b, h, n, device=q.device, dtype=torch.float32)
    kernel[lambda c: (triton.cdiv(n, c["BLOCK_M"]), b * h)](
        q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        h, n, m, default(scale, 1.0 / math.sqrt(d)) * LOG2E, *_buckets(n, m),
        **_meta(q, causal), **config,
    )  # fmt: skip
    return o.to(dtype), lse


def block_plan(
    n: int, m: int, causal: bool, *, block_m: int = 64, block_n: int = 64
) -> tuple[Tensor, Tensor]:
    """Step 4: how the kernels visit the (query block, key block) tiles, from the
    kernels' own range functions: 0 skipped, 1 no mask, 2 masked. Returns the plan
    of the forward and dQ kernels, and that of the dK/dV kernel."""
    check_positive(n=n, m=m, block_m=block_m, block_n=block_n)
    rows, cols = triton.cdiv(n, block_m), triton.cdiv(m, block_n)
    device = "cpu" if _interpreted() else "cuda"
    out = torch.zeros(4, max(rows, cols), dtype=torch.int32, device=device)
    _plan_kernel[(max(rows, cols),)](*out, n, m, block_m, block_n, bool(causal))
    free, hi, lo, free_q = (t[:, None] for t in out.long().cpu())
    i = torch.arange(rows)[:, None] * block_m  # first row of each query block
    j = torch.arange(cols)[None, :] * block_n  # first key of each key block
    by_rows = torch.where(j < free[:rows], 1, torch.where(j < hi[:rows], 2, 0))
    lo, free_q = lo[:cols].T, free_q[:cols].T
    by_cols = torch.where(i < lo, 0, torch.where(i < free_q, 2, 1))
    return by_rows, by_cols


def flash_backward(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
    causal: bool = False, scale: float | None = None, *,
    block_m: int | None = None, block_n: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Step 5: dq (b h n d), dk and dv (b h m d) from the saved o and lse."""
    dkdv, dkdv_config = _choose(_bwd_dkdv_kernel, _dkdv_tuned, block_m, block_n)
    dq_kernel, dq_config = _choose(_bwd_dq_kernel, _dq_tuned, block_m, block_n)
    _check_flash(q, k, v)
    check(do.shape == o.shape == q.shape, "do and o must have the shape of q")
    check(lse.shape == q.shape[:3], f"lse must have shape (b h n), got {lse.shape}")
    dtypes = (q.dtype, k.dtype, v.dtype)
    do, q, k, v, o = _prepare(do, q, k, v, o)
    (b, h, n, d), m = q.shape, k.shape[2]
    scale, meta = default(scale, 1.0 / math.sqrt(d)), _meta(q, causal)
    delta = torch.empty_like(lse)
    _bwd_preprocess[(triton.cdiv(n, 64), b * h)](
        o, do, delta, *_strides(o), *_strides(do), h, n,
        HEAD_DIM=d, BLOCK_D=meta["BLOCK_D"], BLOCK_M=64,
    )  # fmt: skip
    (q, dq), (k, dk), (v, dv) = _like(q), _like(k), _like(v)  # grads: same strides
    args = (*_strides(q), *_strides(k), *_strides(v), *_strides(do), h, n, m)
    args = (*args, scale, scale * LOG2E, *_buckets(n, m))
    lse = lse.contiguous()
    dkdv[lambda c: (triton.cdiv(m, c["BLOCK_N"]), b * h)](
        q, k, v, do, dk, dv, lse, delta, *args, **meta, **dkdv_config
    )
    dq_kernel[lambda c: (triton.cdiv(n, c["BLOCK_M"]), b * h)](
        q, k, v, do, dq, lse, delta, *args, **meta, **dq_config
    )
    dq, dk, dv = (g.to(t) for g, t in zip((dq, dk, dv), dtypes))
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, o and the LSE (O(n) memory), recomputes P."""

    @staticmethod
    def forward(
        ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float | None
    ) -> Tensor:
        o, lse = flash_forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_backward(do, q, k, v, o, lse, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None


def flash_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None
) -> Tensor:
    """FlashAttention: q (b h n d), k and v (b h m d) -> (b h n d), differentiable.

    Same answer as ``minimodels.attention.attention_naive`` (end-aligned causal
    mask, zeros for a row that sees no key) in O(n) extra memory.
    """
    _check_flash(q, k, v)
    return FlashAttention.apply(q, k, v, causal, scale)
