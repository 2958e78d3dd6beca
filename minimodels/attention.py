"""Softmax attention: the reference every long-context model is measured against.

"Attention Is All You Need" (Vaswani et al., 2017, arXiv:1706.03762):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + M) V,

with M = -inf above the diagonal when the attention is causal. Queries and keys may
have different lengths; the causal mask is then aligned to the *end* of the keys
(query i sees keys j <= i + n_k - n_q), as in FlashAttention-2 and KV-cache decoding.
A query row that sees no key at all returns zeros.

The ladder towards FlashAttention ("FlashAttention: Fast and Memory-Efficient Exact
Attention with IO-Awareness", Dao, Fu, Ermon, Rudra, Re, 2022, arXiv:2205.14135;
"FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning",
Dao, 2023, arXiv:2307.08691), every rung with the signature of ``attention_naive``:

- ``attention_tiled``: blocks of queries against blocks of keys, exact softmax in two
  passes (pass 1: the row max m_i; pass 2: l_i = sum_j exp(s_ij - m_i) and
  o_i = sum_j exp(s_ij - m_i) v_j / l_i).
- ``attention_online_softmax``: one pass with a running max and sum (FA2, Alg. 1):
  m' = max(m, rowmax(S_j)), l' = exp(m - m') l + rowsum(exp(S_j - m')),
  acc' = exp(m - m') acc + exp(S_j - m') V_j, and at the end o = acc / l,
  LSE = m + log l.
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

Rotary position embeddings: "RoFormer" (Su et al., 2021, arXiv:2104.09864).

Shapes: b batch, h heads, n query length, m key length, d head dim, c model dim,
i/j a block of queries/keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from minimodels._util import check, check_divides, check_ndim, check_positive, default

__all__ = [
    "attention_naive",
    "attention_sdpa",
    "attention_tiled",
    "attention_online_softmax",
    "online_softmax_forward",
    "attention_backward",
    "attention_backward_tiled",
    "attention_flash_torch",
    "causal_mask",
    "MultiHeadAttention",
    "RotaryEmbedding",
]


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_ndim(name, t, 4, "b h n d")
        check(
            t.is_floating_point(),
            f"{name} must be a floating-point tensor, got {t.dtype}",
        )
    check(
        q.shape[:2] == k.shape[:2] == v.shape[:2],
        f"q, k, v must share batch and heads, got {tuple(q.shape)}, "
        f"{tuple(k.shape)}, {tuple(v.shape)}",
    )
    check(k.shape[2] == v.shape[2], "k and v must have the same length")
    check(q.shape[-1] == k.shape[-1], "q and k must have the same head dim")
    check(q.dtype == k.dtype == v.dtype, "q, k, v must have the same dtype")


def causal_mask(n: int, m: int, device: torch.device | None = None) -> Tensor:
    """(n, m) boolean mask, True where query i may see key j (end-aligned)."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(m, device=device)[None, :]
    return j <= i + (m - n)


def attention_naive(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None
) -> Tensor:
    """Plain attention that materializes the (n, m) score matrix.

    q: (b h n d), k and v: (b h m d) -> (b h n d).
    """
    _check_qkv(q, k, v)
    scale = default(scale, 1.0 / math.sqrt(q.shape[-1]))
    s = torch.einsum("bhnd,bhmd->bhnm", q, k) * scale
    if causal:
        mask = causal_mask(q.shape[2], k.shape[2], q.device)
        s = s.masked_fill(~mask, float("-inf"))
    low_precision = q.dtype in (torch.float16, torch.bfloat16)
    p = torch.softmax(s, dim=-1, dtype=torch.float32 if low_precision else None)
    p = p.to(q.dtype)
    if causal and q.shape[2] > k.shape[2]:
        p = p.nan_to_num(0.0)  # rows with no visible key: softmax of all -inf
    return torch.einsum("bhnm,bhmd->bhnd", p, v)


def attention_sdpa(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None
) -> Tensor:
    """The same attention through ``F.scaled_dot_product_attention`` (fused kernels).

    SDPA's ``is_causal`` aligns the mask to the *start*; for n != m we pass our
    end-aligned mask explicitly so both functions compute the same thing.
    """
    _check_qkv(q, k, v)
    n, m = q.shape[2], k.shape[2]
    if not causal or n == m:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    mask = causal_mask(n, m, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.masked_fill(~mask.any(-1)[:, None], 0.0)


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


def attention_tiled(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    scale: float | None = None,
    *,
    block_m: int = 64,
    block_n: int = 64,
) -> Tensor:
    """Exact attention over (block_m x block_n) tiles, softmax in two passes.

    Pass 1 finds each row's max over all key blocks; pass 2, knowing the final
    max, sums exp(s - m) and the weighted values. No rescaling is needed, but
    every key block is read twice. q: (b h n d), k and v: (b h m d) -> (b h n d).
    """
    dtype = q.dtype
    q, k, v, scale, shift = _ladder_setup(q, k, v, scale, block_m, block_n)
    n, m_len = q.shape[2], k.shape[2]
    out = []
    for i0 in range(0, n, block_m):
        q_i = q[:, :, i0 : i0 + block_m]
        row_max = q_i.new_full(q_i.shape[:3], float("-inf"))  # (b h i)
        for j0 in range(0, m_len, block_n):  # pass 1: m_i = max_j s_ij
            s = _scores(q_i, k[:, :, j0 : j0 + block_n], scale, causal, i0, j0, shift)
            row_max = torch.maximum(row_max, s.amax(-1))
        row_max = _finite(row_max)
        row_sum = torch.zeros_like(row_max)
        acc = q_i.new_zeros(*q_i.shape[:3], v.shape[-1])
        for j0 in range(0, m_len, block_n):  # pass 2: l_i and sum_j p_ij v_j
            s = _scores(q_i, k[:, :, j0 : j0 + block_n], scale, causal, i0, j0, shift)
            p = torch.exp(s - row_max[..., None])
            row_sum = row_sum + p.sum(-1)
            acc = acc + p @ v[:, :, j0 : j0 + block_n]
        out.append(acc / torch.where(row_sum == 0, 1.0, row_sum)[..., None])
    return torch.cat(out, dim=2).to(dtype)


def online_softmax_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    scale: float | None = None,
    *,
    block_m: int = 64,
    block_n: int = 64,
) -> tuple[Tensor, Tensor]:
    """One pass over key blocks with a running max and sum (FA2, Algorithm 1).

    Returns the output (b h n d) and the log-sum-exp LSE_i = m_i + log l_i (b h n),
    -inf for a row that sees no key (its output is 0).
    """
    q, k, v, scale, shift = _ladder_setup(q, k, v, scale, block_m, block_n)
    n, m_len = q.shape[2], k.shape[2]
    outs, lses = [], []
    for i0 in range(0, n, block_m):
        q_i = q[:, :, i0 : i0 + block_m]
        m_i = q_i.new_full(q_i.shape[:3], float("-inf"))  # running max (b h i)
        l_i = torch.zeros_like(m_i)  # running sum of exp(s - m_i)
        acc = q_i.new_zeros(*q_i.shape[:3], v.shape[-1])  # running sum of p v
        for j0 in range(0, m_len, block_n):
            s = _scores(q_i, k[:, :, j0 : j0 + block_n], scale, causal, i0, j0, shift)
            m_new = _finite(torch.maximum(m_i, s.amax(-1)))
            alpha = torch.exp(m_i - m_new)  # rescales what was summed so far
            p = torch.exp(s - m_new[..., None])
            l_i = alpha * l_i + p.sum(-1)
            acc = alpha[..., None] * acc + p @ v[:, :, j0 : j0 + block_n]
            m_i = m_new
        outs.append(acc / torch.where(l_i == 0, 1.0, l_i)[..., None])
        lses.append(m_i + torch.log(l_i))  # log 0 = -inf: no visible key
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def attention_online_softmax(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    scale: float | None = None,
    *,
    block_m: int = 64,
    block_n: int = 64,
) -> Tensor:
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
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    causal: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
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
) -> tuple[Tensor, Tensor, Tensor]:
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
    def forward(ctx, q, k, v, causal, scale, block_m, block_n):  # type: ignore[override]
        blocks = {"block_m": block_m, "block_n": block_n}
        o, lse = online_softmax_forward(q, k, v, causal, scale, **blocks)
        o = o.to(q.dtype)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale, ctx.blocks = causal, scale, blocks
        return o

    @staticmethod
    def backward(ctx, do):  # type: ignore[override]
        q, k, v, o, lse = ctx.saved_tensors
        grads = attention_backward_tiled(
            do, q, k, v, o, lse, ctx.causal, ctx.scale, **ctx.blocks
        )
        dq, dk, dv = (g.to(t.dtype) for g, t in zip(grads, (q, k, v)))
        return dq, dk, dv, None, None, None, None


def attention_flash_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    scale: float | None = None,
    *,
    block_m: int = 64,
    block_n: int = 64,
) -> Tensor:
    """FlashAttention in PyTorch, forward and backward: ``online_softmax_forward``
    and ``attention_backward_tiled`` in one autograd Function, which saves
    q, k, v, o and the LSE for the backward (autograd through ``attention_naive``
    saves P). q: (b h n d), k and v: (b h m d) -> (b h n d).
    """
    _check_qkv(q, k, v)
    check_positive(block_m=block_m, block_n=block_n)
    return _FlashTorch.apply(q, k, v, causal, scale, block_m, block_n)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding: rotate pairs of channels by position * frequency."""

    inv_freq: Tensor

    def __init__(self, dim_head: int, base: float = 10_000.0) -> None:
        super().__init__()
        check(dim_head % 2 == 0, f"dim_head must be even for rotary, got {dim_head}")
        inv_freq = base ** (-torch.arange(0, dim_head, 2).float() / dim_head)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:  # x: (b h n d)
        pos = torch.arange(offset, offset + x.shape[-2], device=x.device)
        angles = pos[:, None].float() * self.inv_freq[None, :]  # (n d/2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return rotated.flatten(-2)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention as a sequence mixer: (b n c) -> (b n c).

    ``fast=True`` runs SDPA, ``fast=False`` the naive reference; both give the same
    answer (tested). ``step`` decodes one token at a time with a key/value cache.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 4,
        dim_head: int | None = None,
        causal: bool = True,
        rotary: bool = True,
        fast: bool = True,
    ) -> None:
        super().__init__()
        check_positive(dim=dim, heads=heads)
        if dim_head is None:
            check_divides("heads", heads, "dim", dim)
        else:
            check_positive(dim_head=dim_head)
        self.heads = heads
        self.dim_head = default(dim_head, dim // heads)
        self.causal, self.fast = causal, fast
        inner = heads * self.dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.rotary = RotaryEmbedding(self.dim_head) if rotary else None

    def _qkv(self, x: Tensor, offset: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        qkv = rearrange(self.to_qkv(x), "b n (t h d) -> t b h n d", t=3, h=self.heads)
        q, k, v = qkv.unbind(0)
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        return q, k, v

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        attend = attention_sdpa if self.fast else attention_naive
        out = attend(q, k, v, causal=self.causal)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))

    def forward(self, x: Tensor) -> Tensor:  # x: (b n c)
        check_ndim("x", x, 3, "b n c")
        return self._attend(*self._qkv(x))

    def init_state(self, batch: int) -> tuple[Tensor, Tensor] | None:
        return None  # the cache starts empty; its length is the position offset

    def step(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One token x: (b c) -> (b c), appending its key and value to the cache."""
        check(self.causal, "step() needs a causal attention")
        offset = 0 if state is None else state[0].shape[2]
        q, k, v = self._qkv(x[:, None], offset)
        if state is not None:
            k, v = torch.cat((state[0], k), dim=2), torch.cat((state[1], v), dim=2)
        return self._attend(q, k, v)[:, 0], (k, v)
