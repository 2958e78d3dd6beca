"""FlashAttention in Triton, grown in four steps that the chapter shows in turn.

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

1. ``flash_forward_block``: one program = one query block of one head against all
   keys, online softmax in registers (non-causal, 2-D inputs).
2. ``flash_forward``: the grid is (query block, batch * head); the causal mask is
   end-aligned (query i sees key j <= i + m - n), key blocks that are fully masked
   are skipped, only the diagonal and ragged blocks pay for masking; the
   log-sum-exp is written for the backward.
3. ``flash_backward``: preprocess D, then one kernel for dK/dV (a program per key
   block, looping over queries) and one for dQ (a program per query block).
4. ``flash_forward_tuned`` / ``flash_backward_tuned``: the same kernels under
   ``triton.autotune`` (block sizes, warps, stages) on a GPU; under the interpreter a
   fixed configuration. ``flash_attention`` wraps them in an autograd Function.

Head dims up to 128 are padded to a power of two (>= 16) by masked loads; any
sequence length works (the ragged last block is masked); fp16 and bf16 accumulate
in fp32, fp32 inputs use IEEE fp32 dots (the interpreter on CPU computes in fp32).
A query row that sees no key returns 0 (and LSE = -inf).

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
    "flash_backward",
    "flash_forward_tuned",
    "flash_backward_tuned",
    "FlashAttention",
    "flash_attention",
]

LOG2E = 1.4426950408889634  # exp(x) = 2^(x log2 e): exp2 is the GPU's native op
LN2 = 0.6931471805599453
MAX_HEAD_DIM = 128


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b accumulated in fp32; exact fp32 (no TF32) when IEEE is set."""
    if IEEE:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


# --- Step 1: one query block against all keys ------------------------------------


@triton.jit
def _fwd_block_kernel(
    Q, K, V, O,  # q, o: (n d), k, v: (m d), rows contiguous in d
    stride_q, stride_k, stride_v, stride_o,  # row strides
    N, M, scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d[None, :] < HEAD_DIM  # padded head dim: load zeros beyond d
    q = tl.load(Q + rows[:, None] * stride_q + offs_d[None, :],
                mask=(rows[:, None] < N) & d_ok, other=0.0)  # fmt: skip
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j0 in range(0, M, BLOCK_N):
        cols = j0 + offs_n
        kv_ok = (cols[:, None] < M) & d_ok
        k = tl.load(
            K + cols[:, None] * stride_k + offs_d[None, :], mask=kv_ok, other=0.0
        )
        v = tl.load(
            V + cols[:, None] * stride_v + offs_d[None, :], mask=kv_ok, other=0.0
        )
        s = _dot(q, tl.trans(k), IEEE) * scale_log2
        s = tl.where(cols[None, :] < M, s, float("-inf"))  # ragged last key block
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = alpha * l_i + tl.sum(p, 1)
        acc = alpha[:, None] * acc + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    o = acc / l_i[:, None]
    tl.store(O + rows[:, None] * stride_o + offs_d[None, :], o.to(O.dtype.element_ty),
             mask=(rows[:, None] < N) & d_ok)  # fmt: skip


# --- Step 2: the full forward ------------------------------------------------------


@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q, K, V, stride_kn, stride_vn, lo, hi, rows, shift, M,
    scale_log2, offs_n, offs_d,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Key blocks lo..hi: without masks (MASKED=False: every key visible to every
    row) or with the causal and ragged-end masks (the diagonal and last blocks)."""
    d_ok = offs_d[None, :] < HEAD_DIM
    for j0 in range(lo, hi, BLOCK_N):
        cols = j0 + offs_n
        kv_ok = (cols[:, None] < M) & d_ok
        k = tl.load(
            K + cols[:, None] * stride_kn + offs_d[None, :], mask=kv_ok, other=0.0
        )
        v = tl.load(
            V + cols[:, None] * stride_vn + offs_d[None, :], mask=kv_ok, other=0.0
        )
        s = _dot(q, tl.trans(k), IEEE) * scale_log2
        if MASKED:
            visible = cols[None, :] < M
            if CAUSAL:
                visible = visible & (cols[None, :] <= rows[:, None] + shift)
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # row sees no key yet
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = m_new
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = alpha * l_i + tl.sum(p, 1)
        acc = alpha[:, None] * acc + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _key_ranges(start_m, N, M, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr):  # fmt: skip
    """[0, free) key blocks need no mask for query rows start_m..start_m+BLOCK_M;
    [free, hi) need one; keys >= hi are hidden from every row (skipped)."""
    full = M // BLOCK_N * BLOCK_N  # keys before the ragged last block
    if CAUSAL:
        shift = M - N  # end-aligned: row i sees key j <= i + shift
        free = tl.maximum(start_m + shift + 1, 0) // BLOCK_N * BLOCK_N
        free = tl.minimum(free, full)
        hi = tl.minimum(tl.maximum(start_m + BLOCK_M + shift, 0), M)
        free = tl.minimum(free, hi)
    else:
        free = full
        hi = M
    return free, hi


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE,  # q, o: (b h n d), k, v: (b h m d), lse: (b h n) fp32
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    H, N, M, scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    O += b * stride_ob + h * stride_oh
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = (rows[:, None] < N) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + rows[:, None] * stride_qn + offs_d[None, :], mask=q_ok, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    free, hi = _key_ranges(start_m, N, M, BLOCK_M, BLOCK_N, CAUSAL)
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, K, V, stride_kn, stride_vn, 0, free, rows, M - N, M,
        scale_log2, offs_n, offs_d, HEAD_DIM, BLOCK_N, False, CAUSAL, IEEE,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, K, V, stride_kn, stride_vn, free, hi, rows, M - N, M,
        scale_log2, offs_n, offs_d, HEAD_DIM, BLOCK_N, True, CAUSAL, IEEE,
    )  # fmt: skip
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # l = 0: the row sees no key
    o = acc / l_safe[:, None]  # ... and returns 0
    lse = (m_i + tl.log2(l_safe)) * 0.6931471805599453  # natural log, or -inf
    tl.store(LSE + bh * N + rows, lse, mask=rows < N)
    tl.store(O + rows[:, None] * stride_on + offs_d[None, :],
             o.to(O.dtype.element_ty), mask=q_ok)  # fmt: skip


# --- Step 3: the backward ----------------------------------------------------------


@triton.jit
def _bwd_preprocess(
    O, DO, DELTA, stride_ob, stride_oh, stride_on, stride_db, stride_dh, stride_dn,
    H, N, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """D_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij, one fp32 per query row."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    offs_d = tl.arange(0, BLOCK_D)
    ok = (rows[:, None] < N) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_on
                + offs_d[None, :], mask=ok, other=0.0)  # fmt: skip
    do = tl.load(DO + b * stride_db + h * stride_dh + rows[:, None] * stride_dn
                 + offs_d[None, :], mask=ok, other=0.0)  # fmt: skip
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh * N + rows, delta, mask=rows < N)


@triton.jit
def _bwd_dkdv_inner(
    dk, dv, k, v, Q, DO, LSE, DELTA, stride_qn, stride_dn, lo, hi, cols, shift, N,
    scale_log2, offs_m, offs_d,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    d_ok = offs_d[None, :] < HEAD_DIM
    for i0 in range(lo, hi, BLOCK_M):
        rows = i0 + offs_m
        ok = (rows[:, None] < N) & d_ok  # rows >= N load 0 and so add 0
        q = tl.load(Q + rows[:, None] * stride_qn + offs_d[None, :], mask=ok, other=0.0)
        do = tl.load(
            DO + rows[:, None] * stride_dn + offs_d[None, :], mask=ok, other=0.0
        )
        lse = tl.load(LSE + rows, mask=rows < N, other=0.0)
        lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
        delta = tl.load(DELTA + rows, mask=rows < N, other=0.0)
        p_t = tl.exp2(_dot(k, tl.trans(q), IEEE) * scale_log2 - lse[None, :])  # (j i)
        if MASKED:
            p_t = tl.where(cols[:, None] <= rows[None, :] + shift, p_t, 0.0)
        dv += _dot(p_t.to(do.dtype), do, IEEE)
        dp_t = _dot(v, tl.trans(do), IEEE)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q.dtype), q, IEEE)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA,  # dk, dv: like k, v (b h m d)
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_db, stride_dh, stride_dn,
    H, N, M, scale, scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One program per key block: loop over the query blocks that see it."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    Q += b * stride_qb + h * stride_qh
    DO += b * stride_db + h * stride_dh
    LSE += bh * N
    DELTA += bh * N
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    kv_ok = (cols[:, None] < M) & (offs_d[None, :] < HEAD_DIM)
    k_ptrs = K + b * stride_kb + h * stride_kh + cols[:, None] * stride_kn
    v_ptrs = V + b * stride_vb + h * stride_vh + cols[:, None] * stride_vn
    k = tl.load(k_ptrs + offs_d[None, :], mask=kv_ok, other=0.0)
    v = tl.load(v_ptrs + offs_d[None, :], mask=kv_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    shift = M - N
    if CAUSAL:  # rows i < start_n - shift see none of these keys: skipped
        lo = tl.maximum(start_n - shift, 0) // BLOCK_M * BLOCK_M
        # rows i >= start_n + BLOCK_N - 1 - shift see all of them: no mask
        free = tl.maximum(start_n + BLOCK_N - 1 - shift + BLOCK_M - 1, 0)
        free = tl.minimum(tl.maximum(free // BLOCK_M * BLOCK_M, lo), N)
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, Q, DO, LSE, DELTA, stride_qn, stride_dn, lo, free, cols,
            shift, N, scale_log2, offs_m, offs_d, HEAD_DIM, BLOCK_M, True, IEEE,
        )  # fmt: skip
    else:
        free = 0
    dk, dv = _bwd_dkdv_inner(
        dk, dv, k, v, Q, DO, LSE, DELTA, stride_qn, stride_dn, free, N, cols,
        shift, N, scale_log2, offs_m, offs_d, HEAD_DIM, BLOCK_M, False, IEEE,
    )  # fmt: skip
    dk_ptrs = DK + b * stride_kb + h * stride_kh + cols[:, None] * stride_kn
    dv_ptrs = DV + b * stride_vb + h * stride_vh + cols[:, None] * stride_vn
    tl.store(
        dk_ptrs + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=kv_ok
    )
    tl.store(dv_ptrs + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_ok)


@triton.jit
def _bwd_dq_inner(
    dq, q, do, lse, delta, K, V, stride_kn, stride_vn, lo, hi, rows, shift, M,
    scale_log2, offs_n, offs_d,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    d_ok = offs_d[None, :] < HEAD_DIM
    for j0 in range(lo, hi, BLOCK_N):
        cols = j0 + offs_n
        kv_ok = (cols[:, None] < M) & d_ok
        k = tl.load(
            K + cols[:, None] * stride_kn + offs_d[None, :], mask=kv_ok, other=0.0
        )
        v = tl.load(
            V + cols[:, None] * stride_vn + offs_d[None, :], mask=kv_ok, other=0.0
        )
        p = tl.exp2(_dot(q, tl.trans(k), IEEE) * scale_log2 - lse[:, None])
        if MASKED:
            visible = cols[None, :] < M
            if CAUSAL:
                visible = visible & (cols[None, :] <= rows[:, None] + shift)
            p = tl.where(visible, p, 0.0)
        dp = _dot(do, tl.trans(v), IEEE)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, IEEE)
    return dq


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA,  # dq: like q (b h n d)
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_db, stride_dh, stride_dn,
    H, N, M, scale, scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One program per query block: loop over the key blocks it sees."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (rows[:, None] < N) & (offs_d[None, :] < HEAD_DIM)
    q_ptrs = Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn
    do_ptrs = DO + b * stride_db + h * stride_dh + rows[:, None] * stride_dn
    q = tl.load(q_ptrs + offs_d[None, :], mask=ok, other=0.0)
    do = tl.load(do_ptrs + offs_d[None, :], mask=ok, other=0.0)
    lse = tl.load(LSE + bh * N + rows, mask=rows < N, other=0.0)
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
    delta = tl.load(DELTA + bh * N + rows, mask=rows < N, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    free, hi = _key_ranges(start_m, N, M, BLOCK_M, BLOCK_N, CAUSAL)
    dq = _bwd_dq_inner(
        dq, q, do, lse, delta, K, V, stride_kn, stride_vn, 0, free, rows, M - N, M,
        scale_log2, offs_n, offs_d, HEAD_DIM, BLOCK_N, False, CAUSAL, IEEE,
    )  # fmt: skip
    dq = _bwd_dq_inner(
        dq, q, do, lse, delta, K, V, stride_kn, stride_vn, free, hi, rows, M - N, M,
        scale_log2, offs_n, offs_d, HEAD_DIM, BLOCK_N, True, CAUSAL, IEEE,
    )  # fmt: skip
    dq_ptrs = DQ + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn
    tl.store(dq_ptrs + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=ok)


# --- Step 4: autotuning -----------------------------------------------------------


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _autotune_configs(pairs: list[tuple[int, int]]) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn in pairs
        for w in (4, 8)
        for s in (2, 3, 4)
    ]


_TUNE_KEY = ["N", "M", "HEAD_DIM", "CAUSAL"]
if _interpreted() or not torch.cuda.is_available():
    # The interpreter cannot time kernels: one fixed configuration, no autotuning.
    _fwd_tuned = _dkdv_tuned = _dq_tuned = None
else:
    _fwd_tuned = triton.autotune(
        _autotune_configs([(64, 64), (128, 32), (128, 64), (128, 128)]), _TUNE_KEY
    )(_fwd_kernel)
    _dkdv_tuned = triton.autotune(
        _autotune_configs([(32, 64), (32, 128), (64, 64), (64, 128)]), _TUNE_KEY
    )(_bwd_dkdv_kernel)
    _dq_tuned = triton.autotune(
        _autotune_configs([(64, 32), (128, 32), (64, 64), (128, 64)]), _TUNE_KEY
    )(_bwd_dq_kernel)
INTERPRETER_BLOCKS = 64  # the fixed block size of step 4 under the interpreter


# --- Python wrappers --------------------------------------------------------------


def _check_flash(q: Tensor, k: Tensor, v: Tensor) -> None:
    _check_qkv(q, k, v)
    check(
        q.dtype in (torch.float16, torch.bfloat16, torch.float32),
        f"q, k, v must be float16, bfloat16 or float32, got {q.dtype}",
    )
    check(
        k.shape[-1] == v.shape[-1],
        f"v must have the head dim of q and k ({k.shape[-1]}), got {v.shape[-1]}",
    )
    d = q.shape[-1]
    check(1 <= d <= MAX_HEAD_DIM, f"head dim must be in 1..{MAX_HEAD_DIM}, got {d}")
    check(q.device == k.device == v.device, "q, k, v must be on the same device")
    check(
        q.is_cuda or _interpreted(),
        "CPU tensors need TRITON_INTERPRET=1 set before importing "
        "minimodels.kernels.flash",
    )


def _rowmajor(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


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
    return {
        "HEAD_DIM": d,
        "BLOCK_D": max(16, triton.next_power_of_2(d)),
        "CAUSAL": bool(causal),
        "IEEE": q.dtype == torch.float32,
    }


def flash_forward_block(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float | None = None,
    *,
    block_m: int = 64,
    block_n: int = 64,
) -> Tensor:
    """Step 1: one head, non-causal. q: (n d), k and v: (m d) -> (n d).

    Each program loads one block of queries and streams every key block past it.
    """
    check(q.ndim == k.ndim == v.ndim == 2, "step 1 takes one head: (n d), (m d)")
    check_positive(block_m=block_m, block_n=block_n)
    q4, k4, v4 = (_rowmajor(t)[None, None] for t in (q, k, v))
    _check_flash(q4, k4, v4)
    q, k, v = q4[0, 0], k4[0, 0], v4[0, 0]
    (n, d), m = q.shape, k.shape[0]
    scale = default(scale, 1.0 / math.sqrt(d))
    o = torch.empty_like(q)
    meta = _meta(q4, False)
    _fwd_block_kernel[(triton.cdiv(n, block_m),)](
        q, k, v, o, q.stride(0), k.stride(0), v.stride(0), o.stride(0),
        n, m, scale * LOG2E, HEAD_DIM=d, BLOCK_D=meta["BLOCK_D"],
        BLOCK_M=block_m, BLOCK_N=block_n, IEEE=meta["IEEE"],
    )  # fmt: skip
    return o


def _forward(
    kernel, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float | None,
    config: dict,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    _check_flash(q, k, v)
    q, k, v = _rowmajor(q), _rowmajor(k), _rowmajor(v)
    (b, h, n, d), m = q.shape, k.shape[2]
    scale = default(scale, 1.0 / math.sqrt(d))
    o = torch.empty_like(q)
    lse = torch.empty(b, h, n, device=q.device, dtype=torch.float32)

    def grid(meta: dict) -> tuple[int, int]:
        return triton.cdiv(n, meta["BLOCK_M"]), b * h

    kernel[grid](
        q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        h, n, m, scale * LOG2E, **_meta(q, causal), **config,
    )  # fmt: skip
    return o, lse


def flash_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    scale: float | None = None,
    *,
    block_m: int = 64,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
) -> tuple[Tensor, Tensor]:
    """Step 2: q (b h n d), k and v (b h m d) -> o (b h n d), lse (b h n) fp32."""
    check_positive(block_m=block_m, block_n=block_n)
    config = {"BLOCK_M": block_m, "BLOCK_N": block_n}
    config |= {"num_warps": num_warps, "num_stages": num_stages}
    return _forward(_fwd_kernel, q, k, v, causal, scale, config)


def _backward(
    kernels, do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
    causal: bool, scale: float | None, configs: tuple[dict, dict],
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    _check_flash(q, k, v)
    check(do.shape == o.shape == q.shape, "do and o must have the shape of q")
    check(lse.shape == q.shape[:3], f"lse must have shape (b h n), got {lse.shape}")
    do, q, k, v, o = (_rowmajor(t) for t in (do, q, k, v, o))
    (b, h, n, d), m = q.shape, k.shape[2]
    scale = default(scale, 1.0 / math.sqrt(d))
    meta = _meta(q, causal)
    delta = torch.empty_like(lse)
    _bwd_preprocess[(triton.cdiv(n, 64), b * h)](
        o, do, delta, *_strides(o), *_strides(do), h, n,
        HEAD_DIM=d, BLOCK_D=meta["BLOCK_D"], BLOCK_M=64,
    )  # fmt: skip
    # dq, dk, dv are written with the strides of q, k, v
    (q, dq), (k, dk), (v, dv) = _like(q), _like(k), _like(v)
    lse = lse.contiguous()
    args = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))
    dkdv, dq_kernel = kernels
    dkdv[lambda c: (triton.cdiv(m, c["BLOCK_N"]), b * h)](
        q, k, v, do, dk, dv, lse, delta, *args, h, n, m, scale, scale * LOG2E,
        **meta, **configs[0],
    )  # fmt: skip
    dq_kernel[lambda c: (triton.cdiv(n, c["BLOCK_M"]), b * h)](
        q, k, v, do, dq, lse, delta, *args, h, n, m, scale, scale * LOG2E,
        **meta, **configs[1],
    )  # fmt: skip
    return dq, dk, dv


def flash_backward(
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    causal: bool = False,
    scale: float | None = None,
    *,
    block_m: int = 64,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
) -> tuple[Tensor, Tensor, Tensor]:
    """Step 3: dq (b h n d), dk and dv (b h m d) from the saved o and lse."""
    check_positive(block_m=block_m, block_n=block_n)
    config = {"BLOCK_M": block_m, "BLOCK_N": block_n}
    config |= {"num_warps": num_warps, "num_stages": num_stages}
    kernels = (_bwd_dkdv_kernel, _bwd_dq_kernel)
    return _backward(kernels, do, q, k, v, o, lse, causal, scale, (config, config))


def _interpreter_config() -> dict:
    return {"BLOCK_M": INTERPRETER_BLOCKS, "BLOCK_N": INTERPRETER_BLOCKS}


def flash_forward_tuned(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Step 4: the forward with autotuned block sizes, warps and stages."""
    if _fwd_tuned is None:
        return _forward(_fwd_kernel, q, k, v, causal, scale, _interpreter_config())
    return _forward(_fwd_tuned, q, k, v, causal, scale, {})


def flash_backward_tuned(
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    causal: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Step 4: the backward with autotuned block sizes, warps and stages."""
    if _dkdv_tuned is None:
        config = _interpreter_config()
        kernels, configs = (_bwd_dkdv_kernel, _bwd_dq_kernel), (config, config)
    else:
        kernels, configs = (_dkdv_tuned, _dq_tuned), ({}, {})
    return _backward(kernels, do, q, k, v, o, lse, causal, scale, configs)


class FlashAttention(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, o and the LSE (O(n) memory), recomputes P."""

    @staticmethod
    def forward(
        ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float | None
    ) -> Tensor:
        o, lse = flash_forward_tuned(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_backward_tuned(do, q, k, v, o, lse, ctx.causal, ctx.scale)
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
