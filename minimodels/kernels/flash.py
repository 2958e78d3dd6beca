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
3 its causal mask, end-aligned (query i sees key j <= i + m - n); 4 the tiles each
program skips, runs unmasked or masks (``block_plan`` reports them); 5
``flash_backward``, D, then a dK/dV kernel (a program per key block) and a dQ
kernel (one per query block); 6 ``flash_attention``, autotuned on a GPU, in an
autograd Function. The tile loads and stores, the head offsets and step 4's
schedule live in ``minimodels.kernels.tiles``, shared with the other kernels.

Head dims up to 128 are padded to a power of two (>= 16); any length works (the
ragged last block is masked); offsets are int64. fp16 and bf16 accumulate in fp32,
fp32 uses IEEE dots (not TF32). Under the interpreter (TRITON_INTERPRET=1, CPU)
bf16 is computed in fp32: the interpreter's bf16 ``tl.dot`` is wrong.

Shapes: b batch, h heads, n query length, m key length, d head dim. A kernel takes
each (b h n d) tensor as its pointer and a tuple of its (b, h, n) strides (``s*``);
the head dim is contiguous.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from minimodels._util import check, check_positive, default
from minimodels.attention import _check_qkv
from minimodels.kernels import tiles
from minimodels.kernels.tiles import (
    block_plan,
    compute_dtype,
    dot,
    head,
    key_ranges,
    load,
    query_ranges,
    store,
    visible,
)

__all__ = ["flash_forward_block", "flash_forward", "block_plan", "flash_backward",
           "compute_dtype", "FlashAttention", "flash_attention"]  # fmt: skip

LOG2E = 1.4426950408889634  # exp(x) = 2^(x log2 e): exp2 is the GPU's native op
_LOG2E, _LN2 = tl.constexpr(LOG2E), tl.constexpr(math.log(2))
MAX_HEAD_DIM = 128


# --- Step 1: one query block against all keys ------------------------------------


@triton.jit
def _fwd_block_kernel(
    Q, K, V, O, stride_q, stride_k, stride_v, stride_o, N, M, scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n, offs_d = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    q = load(Q, rows, stride_q, N, offs_d, HEAD_DIM)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j0 in range(0, M, BLOCK_N):
        cols = j0 + offs_n
        k = load(K, cols, stride_k, M, offs_d, HEAD_DIM)
        v = load(V, cols, stride_v, M, offs_d, HEAD_DIM)
        s = dot(q, tl.trans(k), IEEE) * scale_log2
        s = tl.where(cols[None, :] < M, s, float("-inf"))  # ragged last key block
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = alpha * l_i + tl.sum(p, 1)
        acc = alpha[:, None] * acc + dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    store(O, acc / l_i[:, None], rows, stride_o, N, offs_d, HEAD_DIM)


# --- Steps 2-4: batch x heads and the LSE, the causal mask, the tiles to skip -----


@triton.jit
def _scores(
    q, K, V, sk, sv, j0, rows, N, M, scale_log2, offs_d, HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    """Key block j0..j0+BLOCK_N: its k and v, and the scores S = q k^T in base 2
    (-inf where the causal or ragged-end mask hides a key, only if MASKED)."""
    cols = j0 + tl.arange(0, BLOCK_N)
    k = load(K, cols, sk[2], M, offs_d, HEAD_DIM)
    v = load(V, cols, sv[2], M, offs_d, HEAD_DIM)
    s = dot(q, tl.trans(k), IEEE) * scale_log2
    if MASKED:
        s = tl.where(visible(rows, cols, N, M, CAUSAL), s, float("-inf"))
    return k, v, s


@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q, K, V, sk, sv, lo, hi, rows, N, M, scale_log2, offs_d,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Key blocks lo..hi, with the causal and ragged-end masks only if MASKED:
    the online softmax update of FA2's Algorithm 1, two tile products each."""
    for j0 in range(lo, hi, BLOCK_N):
        k, v, s = _scores(q, K, V, sk, sv, j0, rows, N, M, scale_log2, offs_d,
                          HEAD_DIM, BLOCK_N, MASKED, CAUSAL, IEEE)  # fmt: skip
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED:  # a row that sees no key yet: exp2(-inf - 0) = 0, not nan
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_use = m_new
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = alpha * l_i + tl.sum(p, 1)
        acc = alpha[:, None] * acc + dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _query_block(Q, K, V, sq, sk, sv, H, N, HEAD_DIM: tl.constexpr,
                 BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):  # fmt: skip
    """Program (i, bh) of a grid over (query block, batch x head): its first row,
    bh in int64, its rows, the head-dim offsets, its q, and K, V at its head."""
    start_m, bh = tl.program_id(0) * BLOCK_M, tl.program_id(1).to(tl.int64)
    rows, offs_d = start_m + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D)
    q = load(head(Q, bh, H, sq), rows, sq[2], N, offs_d, HEAD_DIM)
    return start_m, bh, rows, offs_d, q, head(K, bh, H, sk), head(V, bh, H, sv)


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, sq, sk, sv, so,  # q, o: (b h n d), k, v: (b h m d), lse: (b h n)
    H, N, M, scale_log2, N_BUCKET, M_BUCKET,  # buckets: the autotune key only
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    start_m, bh, rows, offs_d, q, K, V = _query_block(
        Q, K, V, sq, sk, sv, H, N, HEAD_DIM, BLOCK_D, BLOCK_M
    )
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    free, hi = key_ranges(start_m, N, M, BLOCK_M, BLOCK_N, CAUSAL)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, sk, sv, 0, free, rows, N, M,
        scale_log2, offs_d, HEAD_DIM, BLOCK_N, False, CAUSAL, IEEE)  # fmt: skip
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, sk, sv, free, hi, rows, N, M,
        scale_log2, offs_d, HEAD_DIM, BLOCK_N, True, CAUSAL, IEEE)  # fmt: skip
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # l = 0: the row sees no key ...
    tl.store(LSE + bh * N + rows, (m_i + tl.log2(l_safe)) * _LN2, mask=rows < N)
    O = head(O, bh, H, so)
    store(O, acc / l_safe[:, None], rows, so[2], N, offs_d, HEAD_DIM)  # ... 0


# --- Step 5: the backward ----------------------------------------------------------


@triton.jit
def _bwd_preprocess(
    O, DO, DELTA, so, sdo, H, N,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """D_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij, one fp32 per query row."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh, offs_d = tl.program_id(1).to(tl.int64), tl.arange(0, BLOCK_D)
    o = load(head(O, bh, H, so), rows, so[2], N, offs_d, HEAD_DIM)
    do = load(head(DO, bh, H, sdo), rows, sdo[2], N, offs_d, HEAD_DIM)
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
    dk, dv, k, v, Q, DO, LSE, DELTA, sq, sdo, lo, hi, cols, N, M, scale_log2,
    offs_d, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    """Query blocks lo..hi against one key block: four tile products each."""
    for i0 in range(lo, hi, BLOCK_M):
        rows = i0 + tl.arange(0, BLOCK_M)
        q = load(Q, rows, sq[2], N, offs_d, HEAD_DIM)  # rows >= N: zeros, so
        do = load(DO, rows, sdo[2], N, offs_d, HEAD_DIM)  # they add nothing
        lse, delta = _row_stats(LSE, DELTA, rows, N)
        p_t = tl.exp2(dot(k, tl.trans(q), IEEE) * scale_log2 - lse[None, :])  # (j i)
        if MASKED:  # the transposed tile (j i) of the causal mask
            p_t = tl.where(tl.trans(visible(rows, cols, N, M, True)), p_t, 0.0)
        dv += dot(p_t.to(do.dtype), do, IEEE)
        ds_t = p_t * (dot(v, tl.trans(do), IEEE) - delta[None, :])
        dk += dot(ds_t.to(q.dtype), q, IEEE)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, sq, sk, sv, sdo,  # dk, dv: the strides of k, v
    H, N, M, scale, scale_log2, N_BUCKET, M_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One program per key block: loop over the query blocks that see it."""
    start_n, bh = tl.program_id(0) * BLOCK_N, tl.program_id(1).to(tl.int64)
    Q, DO = head(Q, bh, H, sq), head(DO, bh, H, sdo)
    K, V = head(K, bh, H, sk), head(V, bh, H, sv)
    cols, offs_d = start_n + tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    k = load(K, cols, sk[2], M, offs_d, HEAD_DIM)
    v = load(V, cols, sv[2], M, offs_d, HEAD_DIM)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo, free = query_ranges(start_n, N, M, BLOCK_M, BLOCK_N, CAUSAL)
    LSE, DELTA = LSE + bh * N, DELTA + bh * N
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, sq, sdo, lo, free,
        cols, N, M, scale_log2, offs_d, HEAD_DIM, BLOCK_M, True, IEEE)  # fmt: skip
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, sq, sdo, free, N,
        cols, N, M, scale_log2, offs_d, HEAD_DIM, BLOCK_M, False, IEEE)  # fmt: skip
    store(head(DK, bh, H, sk), dk * scale, cols, sk[2], M, offs_d, HEAD_DIM)
    store(head(DV, bh, H, sv), dv, cols, sv[2], M, offs_d, HEAD_DIM)


@triton.jit
def _bwd_dq_inner(
    dq, q, do, lse, delta, K, V, sk, sv, lo, hi, rows, N, M, scale_log2, offs_d,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Key blocks lo..hi against one query block: three tile products each."""
    for j0 in range(lo, hi, BLOCK_N):
        k, v, s = _scores(q, K, V, sk, sv, j0, rows, N, M, scale_log2, offs_d,
                          HEAD_DIM, BLOCK_N, MASKED, CAUSAL, IEEE)  # fmt: skip
        p = tl.exp2(s - lse[:, None])  # 0 where masked, and where lse = +inf
        ds = p * (dot(do, tl.trans(v), IEEE) - delta[:, None])
        dq += dot(ds.to(k.dtype), k, IEEE)
    return dq


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, sq, sk, sv, sdo,  # dq: the strides of q
    H, N, M, scale, scale_log2, N_BUCKET, M_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One program per query block: loop over the key blocks it sees."""
    start_m, bh, rows, offs_d, q, K, V = _query_block(
        Q, K, V, sq, sk, sv, H, N, HEAD_DIM, BLOCK_D, BLOCK_M
    )
    do = load(head(DO, bh, H, sdo), rows, sdo[2], N, offs_d, HEAD_DIM)
    lse, delta = _row_stats(LSE + bh * N, DELTA + bh * N, rows, N)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    free, hi = key_ranges(start_m, N, M, BLOCK_M, BLOCK_N, CAUSAL)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, K, V, sk, sv, 0, free, rows, N, M,
        scale_log2, offs_d, HEAD_DIM, BLOCK_N, False, CAUSAL, IEEE)  # fmt: skip
    dq = _bwd_dq_inner(dq, q, do, lse, delta, K, V, sk, sv, free, hi, rows, N, M,
        scale_log2, offs_d, HEAD_DIM, BLOCK_N, True, CAUSAL, IEEE)  # fmt: skip
    store(head(DQ, bh, H, sq), dq * scale, rows, sq[2], N, offs_d, HEAD_DIM)


# --- Step 6: autotuning, and an autograd Function ---------------------------------


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
        if not tiles.interpreted():
            return tuned, {}
    block_m, block_n = default(block_m, FIXED_BLOCKS), default(block_n, FIXED_BLOCKS)
    check_positive(block_m=block_m, block_n=block_n)
    return plain, {"BLOCK_M": block_m, "BLOCK_N": block_n}


def _check_flash(q: Tensor, k: Tensor, v: Tensor) -> None:
    _check_qkv(q, k, v)
    floats = (torch.float16, torch.bfloat16, torch.float32)
    check(q.dtype in floats, f"q, k, v must be float16, bfloat16 or float32: {q.dtype}")
    check(k.shape[-1] == v.shape[-1], f"v must have the head dim of k, {k.shape[-1]}")
    d = q.shape[-1]
    check(1 <= d <= MAX_HEAD_DIM, f"head dim must be in 1..{MAX_HEAD_DIM}, got {d}")
    check(q.device == k.device == v.device, "q, k, v must be on the same device")
    tiles.check_device(q, k, v)


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
    dtype, (q, k, v) = q.dtype, tiles.prepare(q, k, v)
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
    dtype, (q, k, v) = q.dtype, tiles.prepare(q, k, v)
    (b, h, n, d), m = q.shape, k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty(b, h, n, device=q.device, dtype=torch.float32)
    kernel[lambda c: (triton.cdiv(n, c["BLOCK_M"]), b * h)](
        q, k, v, o, lse, *(t.stride()[:3] for t in (q, k, v, o)), h, n, m,
        default(scale, 1.0 / math.sqrt(d)) * LOG2E, *_buckets(n, m),
        **_meta(q, causal), **config,
    )  # fmt: skip
    return o.to(dtype), lse


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
    do, q, k, v, o = tiles.prepare(do, q, k, v, o)
    (b, h, n, d), m = q.shape, k.shape[2]
    scale, meta = default(scale, 1.0 / math.sqrt(d)), _meta(q, causal)
    delta = torch.empty_like(lse)
    _bwd_preprocess[(triton.cdiv(n, 64), b * h)](
        o, do, delta, o.stride()[:3], do.stride()[:3], h, n,
        HEAD_DIM=d, BLOCK_D=meta["BLOCK_D"], BLOCK_M=64,
    )  # fmt: skip
    (q, dq), (k, dk), (v, dv) = map(tiles.like, (q, k, v))  # grads: same strides
    strides = (t.stride()[:3] for t in (q, k, v, do))
    args = (*strides, h, n, m, scale, scale * LOG2E, *_buckets(n, m))
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
