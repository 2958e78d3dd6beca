"""The FlashAttention ladder in PyTorch: exact attention without the (n, m) matrix.

"FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness" (Dao,
Fu, Ermon, Rudra, Re, 2022, arXiv:2205.14135); "FlashAttention-2: Faster Attention
with Better Parallelism and Work Partitioning" (Dao, 2023, arXiv:2307.08691). Every
rung has the signature of ``minimodels.attention.attention_naive`` (q, k, v, causal,
scale; the end-aligned causal mask, zeros for a row that sees no key) and is tested
equal to it:

- ``attention_tiled``: blocks of queries against blocks of keys, exact softmax in two
  passes (pass 1: the row max m_i; pass 2: l_i = sum_j exp(s_ij - m_i) and
  o_i = sum_j exp(s_ij - m_i) v_j / l_i).
- ``online_softmax_forward`` / ``attention_online_softmax``: one pass with a running
  max and sum (FA2, Alg. 1), one ``online_softmax_step`` per key block:
  m' = max(m, rowmax(S_j)), l' = exp(m - m') l + rowsum(exp(S_j - m')),
  acc' = exp(m - m') acc + exp(S_j - m') V_j, and at the end o = acc / l,
  LSE = m + log l. (Pass 2 of ``attention_tiled`` is the same step with the final
  max already known, so it never rescales: exp(m - m') = 1.)
- ``attention_backward``: the FA2 backward equations (Alg. 2) on whole matrices:
  P = exp(S - LSE) is recomputed from the saved log-sum-exp, dV = P^T dO,
  dP = dO V^T, D = rowsum(dO * O), dS = P * (dP - D), dQ = scale dS K,
  dK = scale dS^T Q. It still builds P, dP and dS whole: (n, m) each.
- ``attention_backward_tiled``: the same equations tile by tile, as Alg. 2 orders
  them: an outer loop over key blocks keeps dK_j, dV_j, an inner loop over query
  blocks recomputes P_ij and adds into dQ_i. It holds one (block_m, block_n) tile
  of P, dP and dS at a time: memory O(n d + block_m block_n), not O(n m).
- ``attention_flash_torch``: the online-softmax forward and the tiled backward as
  one autograd Function that saves q, k, v, o and the LSE, nothing of size n x m.

Held besides inputs and outputs, per head: naive, S and P (n, m); tiled and
online softmax, one tile and O(n) row statistics; ``attention_backward``, P, dP,
dS (n, m); the tiled backward, one tile of each (measured in tests and chapter 5).
The Triton kernels that follow the same ladder are ``minimodels.kernels.flash``.

Shapes: b batch, h heads, n query length, m key length, d head dim,
i/j a block of queries/keys.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from minimodels._util import check, check_positive, default
from minimodels.attention import _check_qkv

__all__ = [
    "attention_tiled",
    "online_softmax_step",
    "online_softmax_forward",
    "attention_online_softmax",
    "attention_backward",
    "attention_backward_tiled",
    "attention_flash_torch",
]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 inputs are computed in fp32, as the kernels accumulate in fp32."""
    return torch.promote_types(dtype, torch.float32)


def _scores(
    q_i: Tensor, k_j: Tensor, scale: float, causal: bool, i0: int, j0: int, shift: int
) -> Tensor:
    """Scaled scores of query block i (starting at row i0) against key block j
    (starting at key j0), -inf where the end-aligned causal mask hides a key."""
    s = torch.einsum("bhid,bhjd->bhij", q_i, k_j) * scale
    if causal:
        i = torch.arange(i0, i0 + q_i.shape[2], device=s.device)[:, None]
        j = torch.arange(j0, j0 + k_j.shape[2], device=s.device)[None, :]
        s = s.masked_fill(j > i + shift, float("-inf"))
    return s


def _finite(m: Tensor) -> Tensor:
    """A row max of -inf (no visible key yet) is replaced by 0, so exp(s - m) is 0
    and not exp(-inf + inf) = nan."""
    return torch.where(torch.isinf(m), torch.zeros_like(m), m)


def _ladder_setup(
    q: Tensor, k: Tensor, v: Tensor, scale: float | None, block_m: int, block_n: int
) -> tuple[Tensor, Tensor, Tensor, float, int]:
    _check_qkv(q, k, v)
    check_positive(block_m=block_m, block_n=block_n)
    work = _work_dtype(q.dtype)
    scale = default(scale, 1.0 / math.sqrt(q.shape[-1]))
    return q.to(work), k.to(work), v.to(work), scale, k.shape[2] - q.shape[2]


def online_softmax_step(
    m: Tensor, l: Tensor, acc: Tensor, s: Tensor, v_j: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One key block of the online softmax (FA2, Algorithm 1): the running max m
    and sum l (b h i) and accumulator acc (b h i d), updated by the block's scores
    s (b h i j) and values v_j (b h j d)."""
    m_new = _finite(torch.maximum(m, s.amax(-1)))
    alpha = torch.exp(m - m_new)  # rescales what was summed so far
    p = torch.exp(s - m_new[..., None])
    return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + p @ v_j


def _empty_rows(q_i: Tensor, d_v: int) -> tuple[Tensor, Tensor, Tensor]:
    """Row statistics before any key: m = -inf, l = 0, acc = 0."""
    m = q_i.new_full(q_i.shape[:3], float("-inf"))  # (b h i)
    return m, torch.zeros_like(m), q_i.new_zeros(*q_i.shape[:3], d_v)


def _divide(acc: Tensor, l: Tensor) -> Tensor:
    """o = acc / l; a row that saw no key (l = 0) stays 0."""
    return acc / torch.where(l == 0, 1.0, l)[..., None]


def attention_tiled(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None,
    *, block_m: int = 64, block_n: int = 64,
) -> Tensor:  # fmt: skip
    """Exact attention over (block_m x block_n) tiles, softmax in two passes.

    Pass 1 finds each row's max over all key blocks; pass 2, knowing the final
    max, sums exp(s - m) and the weighted values (``online_softmax_step`` with a
    max that no longer moves, so nothing is rescaled), but every key block is
    read twice. q: (b h n d), k and v: (b h m d) -> (b h n d).
    """
    dtype = q.dtype
    q, k, v, scale, shift = _ladder_setup(q, k, v, scale, block_m, block_n)
    n, m_len = q.shape[2], k.shape[2]
    out = []
    for i0 in range(0, n, block_m):
        q_i = q[:, :, i0 : i0 + block_m]
        row_max, row_sum, acc = _empty_rows(q_i, v.shape[-1])
        for j0 in range(0, m_len, block_n):  # pass 1: m_i = max_j s_ij
            s = _scores(q_i, k[:, :, j0 : j0 + block_n], scale, causal, i0, j0, shift)
            row_max = torch.maximum(row_max, s.amax(-1))
        row_max = _finite(row_max)
        for j0 in range(0, m_len, block_n):  # pass 2: l_i and sum_j p_ij v_j
            s = _scores(q_i, k[:, :, j0 : j0 + block_n], scale, causal, i0, j0, shift)
            v_j = v[:, :, j0 : j0 + block_n]
            row_max, row_sum, acc = online_softmax_step(row_max, row_sum, acc, s, v_j)
        out.append(_divide(acc, row_sum))
    return torch.cat(out, dim=2).to(dtype)


def online_softmax_forward(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None,
    *, block_m: int = 64, block_n: int = 64,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One pass over key blocks with a running max and sum (FA2, Algorithm 1).

    Returns the output (b h n d) and the log-sum-exp LSE_i = m_i + log l_i (b h n),
    -inf for a row that sees no key (its output is 0).
    """
    q, k, v, scale, shift = _ladder_setup(q, k, v, scale, block_m, block_n)
    n, m_len = q.shape[2], k.shape[2]
    outs, lses = [], []
    for i0 in range(0, n, block_m):
        q_i = q[:, :, i0 : i0 + block_m]
        m_i, l_i, acc = _empty_rows(q_i, v.shape[-1])  # running max, sum, sum p v
        for j0 in range(0, m_len, block_n):
            s = _scores(q_i, k[:, :, j0 : j0 + block_n], scale, causal, i0, j0, shift)
            v_j = v[:, :, j0 : j0 + block_n]
            m_i, l_i, acc = online_softmax_step(m_i, l_i, acc, s, v_j)
        outs.append(_divide(acc, l_i))
        lses.append(m_i + torch.log(l_i))  # log 0 = -inf: no visible key
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def attention_online_softmax(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None,
    *, block_m: int = 64, block_n: int = 64,
) -> Tensor:  # fmt: skip
    """FlashAttention's forward in PyTorch: one pass, running max and sum.

    q: (b h n d), k and v: (b h m d) -> (b h n d).
    """
    o, _ = online_softmax_forward(
        q, k, v, causal, scale, block_m=block_m, block_n=block_n
    )
    return o.to(q.dtype)


def _backward_setup(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
    scale: float | None,
) -> tuple[list[Tensor], float]:  # fmt: skip
    _check_qkv(q, k, v)
    check(do.shape == o.shape == q.shape[:3] + v.shape[-1:], "do and o: (b h n d)")
    check(lse.shape == q.shape[:3], f"lse must have shape (b h n), got {lse.shape}")
    work = _work_dtype(q.dtype)
    tensors = [t.to(work) for t in (do, q, k, v, o, lse)]
    tensors[-1] = torch.where(torch.isinf(lse), float("inf"), tensors[-1])  # P = 0
    return tensors, default(scale, 1.0 / math.sqrt(q.shape[-1]))


def attention_backward(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
    causal: bool = False, scale: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """FA2's backward equations (Algorithm 2) on whole matrices, P recomputed from
    the saved LSE. Holds P, dP and dS: three (b h n m) tensors.

    do and o: (b h n d), lse: (b h n) -> dq (b h n d), dk and dv (b h m d).
    """
    (do, q, k, v, o, lse), scale = _backward_setup(do, q, k, v, o, lse, scale)
    s = _scores(q, k, scale, causal, 0, 0, k.shape[2] - q.shape[2])
    p = torch.exp(s - lse[..., None])  # (b h n m), recomputed from the LSE
    dv = torch.einsum("bhnm,bhnd->bhmd", p, do)
    dp = torch.einsum("bhnd,bhmd->bhnm", do, v)
    delta = (do * o).sum(-1, keepdim=True)  # D_i = rowsum(dO * O) = sum_j P_ij dP_ij
    ds = p * (dp - delta)
    dq = torch.einsum("bhnm,bhmd->bhnd", ds, k) * scale
    dk = torch.einsum("bhnm,bhnd->bhmd", ds, q) * scale
    return dq, dk, dv


def attention_backward_tiled(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
    causal: bool = False, scale: float | None = None, *, block_m: int = 64,
    block_n: int = 64,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """FA2's backward tile by tile (Algorithm 2): for each key block j, loop over
    the query blocks i, recompute P_ij = exp(S_ij - L_i), accumulate dK_j and dV_j,
    and add dS_ij K_j into dQ_i. Holds one (block_m, block_n) tile of P, dP, dS.

    do and o: (b h n d), lse: (b h n) -> dq (b h n d), dk and dv (b h m d).
    """
    check_positive(block_m=block_m, block_n=block_n)
    (do, q, k, v, o, lse), scale = _backward_setup(do, q, k, v, o, lse, scale)
    n, m_len, shift = q.shape[2], k.shape[2], k.shape[2] - q.shape[2]
    delta = (do * o).sum(-1)  # D_i, (b h n)
    dq, dks, dvs = torch.zeros_like(q), [], []
    for j0 in range(0, m_len, block_n):
        k_j, v_j = k[:, :, j0 : j0 + block_n], v[:, :, j0 : j0 + block_n]
        dk_j, dv_j = torch.zeros_like(k_j), torch.zeros_like(v_j)
        for i0 in range(0, n, block_m):
            rows = slice(i0, i0 + block_m)
            q_i, do_i = q[:, :, rows], do[:, :, rows]
            s = _scores(q_i, k_j, scale, causal, i0, j0, shift)
            p = torch.exp(s - lse[:, :, rows, None])  # (b h i j)
            dv_j += p.transpose(-1, -2) @ do_i
            ds = p * (do_i @ v_j.transpose(-1, -2) - delta[:, :, rows, None])
            dq[:, :, rows] += (ds @ k_j) * scale
            dk_j += (ds.transpose(-1, -2) @ q_i) * scale
        dks.append(dk_j)
        dvs.append(dv_j)
    return dq, torch.cat(dks, dim=2), torch.cat(dvs, dim=2)


class _FlashTorch(torch.autograd.Function):
    """Saves q, k, v, o and the LSE; the backward recomputes P tile by tile."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, block_m, block_n):
        blocks = {"block_m": block_m, "block_n": block_n}
        o, lse = online_softmax_forward(q, k, v, causal, scale, **blocks)
        o = o.to(q.dtype)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale, ctx.blocks = causal, scale, blocks
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        grads = attention_backward_tiled(
            do, q, k, v, o, lse, ctx.causal, ctx.scale, **ctx.blocks
        )
        dq, dk, dv = (g.to(t.dtype) for g, t in zip(grads, (q, k, v)))
        return dq, dk, dv, None, None, None, None


def attention_flash_torch(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None,
    *, block_m: int = 64, block_n: int = 64,
) -> Tensor:  # fmt: skip
    """FlashAttention in PyTorch, forward and backward: ``online_softmax_forward``
    and ``attention_backward_tiled`` in one autograd Function, which saves
    q, k, v, o and the LSE for the backward (autograd through ``attention_naive``
    saves P). q: (b h n d), k and v: (b h m d) -> (b h n d).
    """
    _check_qkv(q, k, v)
    check_positive(block_m=block_m, block_n=block_n)
    return _FlashTorch.apply(q, k, v, causal, scale, block_m, block_n)
