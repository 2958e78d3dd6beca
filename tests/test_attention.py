from functools import partial

import pytest
import torch

from minimodels.attention import (
    MultiHeadAttention,
    RotaryEmbedding,
    attention_naive,
    attention_sdpa,
    causal_mask,
    local_attention,
    merge_heads,
    split_heads,
)
from minimodels.bench import peak_tensor_bytes
from minimodels.flash import (
    attention_backward,
    attention_backward_tiled,
    attention_flash_torch,
    attention_online_softmax,
    attention_tiled,
    online_softmax_forward,
    online_softmax_step,
)
from minimodels.testing import assert_causal, assert_same


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,m", [(1, 1), (17, 17), (64, 64), (5, 9), (9, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sdpa_equals_naive(causal, n, m, dtype):
    g = torch.Generator().manual_seed(n * 100 + m)
    q = torch.randn(2, 3, n, 16, generator=g, dtype=dtype)
    k = torch.randn(2, 3, m, 16, generator=g, dtype=dtype)
    v = torch.randn(2, 3, m, 16, generator=g, dtype=dtype)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}
    assert_same(
        partial(attention_sdpa, causal=causal),
        partial(attention_naive, causal=causal),
        (q, k, v),
        **tol,
    )


def test_naive_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 4, 8, generator=g, dtype=torch.float64) for _ in "qkv")
    s = q[0, 0] @ k[0, 0].T / 8**0.5
    s = s.masked_fill(torch.ones(4, 4).triu(1).bool(), float("-inf"))
    expected = torch.softmax(s, -1) @ v[0, 0]
    torch.testing.assert_close(attention_naive(q, k, v, causal=True)[0, 0], expected)


def test_causal_mask_is_end_aligned():
    mask = causal_mask(2, 4)
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True]]
    more_queries = causal_mask(4, 2)
    assert not more_queries[0].any() and not more_queries[1].any()
    assert more_queries[3].all()


def test_rows_without_keys_are_zero():
    q, k, v = torch.randn(1, 1, 5, 8), torch.randn(1, 1, 2, 8), torch.randn(1, 1, 2, 8)
    for attend in (attention_naive, attention_sdpa):
        out = attend(q, k, v, causal=True)
        assert torch.isfinite(out).all()
        assert out[0, 0, :3].abs().max() == 0


@pytest.mark.parametrize("fast", [False, True])
def test_multihead_attention_is_causal(fast):
    torch.manual_seed(0)
    mixer = MultiHeadAttention(32, heads=4, fast=fast)
    assert_causal(mixer, torch.randn(2, 13, 32), positions=[0, 5, 12])


def test_fast_and_reference_mixer_agree():
    torch.manual_seed(0)
    fast = MultiHeadAttention(32, heads=4, fast=True)
    slow = MultiHeadAttention(32, heads=4, fast=False)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 11, 32)
    torch.testing.assert_close(fast(x), slow(x), rtol=1e-4, atol=1e-5)


def test_step_with_cache_equals_forward():
    torch.manual_seed(0)
    mixer = MultiHeadAttention(32, heads=4).double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    state, outs = mixer.init_state(2), []
    for t in range(9):
        y, state = mixer.step(x[:, t], state)
        outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 1), mixer(x))
    assert state[0].shape == (2, 4, 9, 8)


def test_rotary_scores_depend_only_on_offset():
    rotary = RotaryEmbedding(8).double()
    q, k = torch.randn(1, 1, 1, 8).double(), torch.randn(1, 1, 1, 8).double()
    score = [(rotary(q, i) * rotary(k, i + 3)).sum() for i in (0, 7, 20)]
    torch.testing.assert_close(score[0], score[1])
    torch.testing.assert_close(score[0], score[2])


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="heads"):
        MultiHeadAttention(30, heads=4)
    with pytest.raises(ValueError, match="q must have shape"):
        attention_naive(
            torch.randn(3, 4, 8), torch.randn(1, 3, 4, 8), torch.randn(1, 3, 4, 8)
        )
    with pytest.raises(ValueError, match="k and v"):
        attention_sdpa(
            torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 5, 8)
        )
    with pytest.raises(ValueError, match="x must have shape"):
        MultiHeadAttention(32)(torch.randn(4, 32))


@pytest.mark.parametrize(
    "kwargs,name",
    [({"dim": 0}, "dim"), ({"dim": -8}, "dim"), ({"dim": 32, "heads": 0}, "heads"),
     ({"dim": 32, "dim_head": 0}, "dim_head")],
)  # fmt: skip
def test_multihead_attention_refuses_empty_sizes(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must be positive"):
        MultiHeadAttention(**kwargs)


@pytest.mark.parametrize(
    "attend",
    [attention_naive, attention_sdpa, attention_tiled, attention_online_softmax,
     attention_flash_torch],
    ids=lambda f: f.__name__,
)  # fmt: skip
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_integer_inputs_are_refused_by_name(attend, which):
    """Integer q, k or v would be truncated (or rejected deep inside einsum)."""
    qkv = {name: torch.randn(1, 1, 4, 8) for name in "qkv"}
    qkv[which] = torch.ones(1, 1, 4, 8, dtype=torch.int64)
    with pytest.raises(ValueError, match=f"{which} must be a floating-point tensor"):
        attend(qkv["q"], qkv["k"], qkv["v"])


# --- The ladder towards FlashAttention ---------------------------------------------

LADDER = [attention_tiled, attention_online_softmax, attention_flash_torch]
LADDER_SHAPES = [(1, 1), (17, 17), (64, 64), (200, 200), (257, 257), (5, 9), (9, 5)]


def _qkv(n, m, d=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed + 1000 * n + m)
    q = torch.randn(2, 2, n, d, generator=g, dtype=dtype)
    k = torch.randn(2, 2, m, d, generator=g, dtype=dtype)
    return q, k, torch.randn(2, 2, m, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("rung", LADDER, ids=lambda f: f.__name__)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,m", LADDER_SHAPES)
def test_ladder_equals_naive(rung, causal, n, m):
    d = {1: 16, 17: 48, 64: 64}.get(n, 16)
    fast = partial(rung, causal=causal, block_m=32, block_n=64)
    assert_same(fast, partial(attention_naive, causal=causal), _qkv(n, m, d))


@pytest.mark.parametrize("rung", LADDER, ids=lambda f: f.__name__)
def test_ladder_rows_without_keys_are_zero(rung):
    q, k, v = _qkv(7, 3)
    out = rung(q, k, v, causal=True, block_m=2, block_n=2)
    assert torch.isfinite(out).all() and out[:, :, :4].abs().max() == 0
    torch.testing.assert_close(out, attention_naive(q, k, v, causal=True))


@pytest.mark.parametrize("rung", LADDER, ids=lambda f: f.__name__)
def test_ladder_low_precision_and_scale(rung):
    q, k, v = _qkv(33, 33, dtype=torch.bfloat16)
    out = rung(q, k, v, causal=True, scale=0.3)
    assert out.dtype == torch.bfloat16
    ref = attention_naive(q.double(), k.double(), v.double(), causal=True, scale=0.3)
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,m", [(1, 1), (17, 17), (64, 64), (13, 40), (40, 13)])
def test_lse_backward_equals_autograd(causal, n, m):
    q, k, v = _qkv(n, m, d=48)
    o, lse = online_softmax_forward(q, k, v, causal, block_m=16, block_n=16)
    s = torch.einsum("bhnd,bhmd->bhnm", q, k) / 48**0.5
    if causal:
        s = s.masked_fill(~causal_mask(n, m), float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(s, -1))
    do = torch.randn_like(o)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    attention_naive(*leaves, causal=causal).backward(do)
    grads = attention_backward(do, q, k, v, o, lse, causal)
    for ours, autograd in zip(grads, leaves):
        torch.testing.assert_close(ours, autograd.grad)
    if causal and n > m:  # rows that see no key: LSE = -inf, zero gradient
        assert torch.isneginf(lse[:, :, : n - m]).all()
        assert grads[0][:, :, : n - m].abs().max() == 0


def test_ladder_is_causal():
    q, k, v = _qkv(12, 12)
    for rung in LADDER:
        for t in (0, 5, 11):
            moved = k.clone()
            moved[:, :, t] += 1.0
            a = rung(q, k, v, causal=True, block_m=4, block_n=4)
            b = rung(q, moved, v, causal=True, block_m=4, block_n=4)
            assert (a[:, :, :t] == b[:, :, :t]).all() and (
                a[:, :, t:] != b[:, :, t:]
            ).any()


BACKWARD_SHAPES = [(1, 1), (17, 17), (64, 64), (13, 40), (40, 13), (100, 37)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,m", BACKWARD_SHAPES)
@pytest.mark.parametrize("blocks", [(16, 16), (32, 8), (7, 64)])
def test_tiled_backward_equals_autograd(causal, n, m, blocks):
    """dQ, dK, dV tile by tile equal autograd through the naive attention
    (odd lengths, n != m both ways, blocks that do not divide the lengths)."""
    q, k, v = _qkv(n, m, d=16, seed=3)
    o, lse = online_softmax_forward(q, k, v, causal)
    do = torch.randn_like(o)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    attention_naive(*leaves, causal=causal).backward(do)
    grads = attention_backward_tiled(
        do, q, k, v, o, lse, causal, block_m=blocks[0], block_n=blocks[1]
    )
    for name, ours, autograd in zip("qkv", grads, leaves):
        torch.testing.assert_close(
            ours, autograd.grad, msg=lambda s, name=name: f"d{name}: {s}"
        )
    if causal and n > m:  # rows that see no key get no gradient
        assert grads[0][:, :, : n - m].abs().max() == 0


def _peaks(n):
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(1, 2, n, 16) for _ in range(4))
    o, lse = online_softmax_forward(q, k, v, True)
    full = peak_tensor_bytes(lambda: attention_backward(do, q, k, v, o, lse, True))
    tiled = peak_tensor_bytes(
        lambda: attention_backward_tiled(do, q, k, v, o, lse, True)
    )
    return full, tiled


def test_tiled_backward_memory_is_linear_in_n():
    """Doubling n: the whole-matrix backward's peak grows ~4x (P, dP, dS are n x n),
    the tiled one's ~2x (dQ, dK, dV and one tile); below one n x n matrix."""
    (full1, tiled1), (full2, tiled2) = _peaks(256), _peaks(512)
    assert full2 / full1 > 3.5 and tiled2 / tiled1 < 2.5
    one_score_matrix = 2 * 512 * 512 * 4  # heads x n x n x fp32
    assert full2 > 3 * one_score_matrix and tiled2 < one_score_matrix


def _saved_bytes(fn):
    """Bytes of the distinct storages autograd saves for the backward of fn()."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_flash_torch_saves_no_score_matrix():
    q, k, v = (torch.randn(1, 2, 256, 16, requires_grad=True) for _ in range(3))
    inputs = 3 * q.numel() * 4
    naive = _saved_bytes(lambda: attention_naive(q, k, v, causal=True))
    ours = _saved_bytes(lambda: attention_flash_torch(q, k, v, causal=True))
    assert naive - inputs >= 2 * 256 * 256 * 4  # P, fp32, both heads
    assert ours == inputs + q.numel() * 4 + 2 * 256 * 4  # + o and the LSE


def test_ladder_bad_input():
    q, k, v = _qkv(4, 4)
    with pytest.raises(ValueError, match="block_m"):
        attention_tiled(q, k, v, block_m=0)
    with pytest.raises(ValueError, match="k and v"):
        attention_online_softmax(q, k, v[:, :, :3])
    with pytest.raises(ValueError, match="lse"):
        attention_backward(q, q, k, v, q, q)
    with pytest.raises(ValueError, match="lse"):
        attention_backward_tiled(q, q, k, v, q, q)
    with pytest.raises(ValueError, match="block_n"):
        attention_backward_tiled(q, q, k, v, q, q[..., 0], block_n=0)
    with pytest.raises(ValueError, match="block_m"):
        attention_flash_torch(q, k, v, block_m=-1)


# --- The one core: mask, bias, window, fewer key/value heads, local attention ----


def _core_inputs(n, m, heads=4, kv_heads=4, lead=(2,), seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*lead, heads, n, 8, generator=g, dtype=torch.float64)
    k, v = (
        torch.randn(*lead, kv_heads, m, 8, generator=g, dtype=torch.float64)
        for _ in "kv"
    )
    return q, k, v, g


@pytest.mark.parametrize("n,m", [(6, 6), (4, 9), (9, 4)])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize(
    "options",
    [{"causal": True}, {"mask": True}, {"bias": True}, {"mask": True, "bias": True},
     {"window": 3}, {"window": 2, "mask": True, "bias": True}],
)  # fmt: skip
def test_core_sdpa_equals_naive_with_mask_bias_window_kv(n, m, kv_heads, options):
    q, k, v, g = _core_inputs(n, m, kv_heads=kv_heads)
    kwargs = {"causal": options.get("causal", False), "window": options.get("window")}
    if options.get("mask"):  # some rows see no key at all
        kwargs["mask"] = torch.rand(1, 4, n, m, generator=g) > 0.6
    if options.get("bias"):
        kwargs["bias"] = torch.randn(4, n, m, generator=g, dtype=torch.float64)
    assert_same(partial(attention_sdpa, **kwargs), partial(attention_naive, **kwargs),
                (q, k, v))  # fmt: skip
    out = attention_naive(q, k, v, **kwargs)
    assert torch.isfinite(out).all()


def test_core_pieces_match_the_formula():
    q, k, v, g = _core_inputs(5, 7, heads=2, kv_heads=1, lead=(1,))
    mask = torch.rand(5, 7, generator=g) > 0.3
    mask[2] = False  # row 2 sees nothing
    bias = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    out = attention_naive(q, k, v, mask=mask, bias=bias, scale=0.5)
    for head in range(2):
        s = q[0, head] @ k[0, 0].T * 0.5 + bias[head]
        s = s.masked_fill(~mask, float("-inf"))
        p = torch.softmax(s, -1).nan_to_num(0.0)  # row 2: 0, not NaN
        torch.testing.assert_close(out[0, head], p @ v[0, 0])
    assert out[0, :, 2].abs().max() == 0


def test_window_semantics_by_hand():
    # 3 queries, 5 keys (2 before the first query), window 2: query i is at key
    # position i + 2 and sees that key and the one before it.
    assert causal_mask(3, 5, window=2).int().tolist() == [
        [0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1],
    ]
    q, k, v, _ = _core_inputs(3, 5, heads=1, kv_heads=1, lead=(1,))
    v = torch.arange(5.0, dtype=torch.float64)[None, None, :, None].expand(1, 1, 5, 8)
    out = attention_naive(torch.zeros_like(q), k, v, window=2)  # equal weights
    torch.testing.assert_close(out[0, 0, :, 0], torch.tensor([1.5, 2.5, 3.5]).double())
    wide = attention_naive(q, k, v, window=5)  # a window past the start: causal
    torch.testing.assert_close(wide, attention_naive(q, k, v, causal=True))


def test_rows_without_keys_have_zero_gradients():
    q, k, v, _ = _core_inputs(4, 3, lead=(1,))
    for attend in (attention_naive, attention_sdpa):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        attend(*leaves, mask=torch.zeros(4, 3, dtype=torch.bool)).sum().backward()
        assert all(t.grad is not None and t.grad.abs().max() == 0 for t in leaves)


@pytest.mark.parametrize("n", [1, 7, 16, 23])
@pytest.mark.parametrize("window,look_back", [(4, 1), (5, 1), (3, 2), (4, 3)])
@pytest.mark.parametrize("fast", [True, False])
def test_local_attention_equals_the_window(n, window, look_back, fast):
    q, k, v, _ = _core_inputs(n, n, kv_heads=2)
    assert_same(
        partial(local_attention, window=window, look_back=look_back, fast=fast),
        partial(attention_naive, window=look_back * window),
        (q, k, v),
    )


def test_local_attention_is_causal():
    q, k, v, _ = _core_inputs(12, 12)
    k2, v2 = k.clone(), v.clone()
    k2[..., 7, :] += 1.0
    v2[..., 7, :] += 1.0
    a, b = local_attention(q, k, v, 4), local_attention(q, k2, v2, 4)
    torch.testing.assert_close(a[..., :7, :], b[..., :7, :])
    assert not torch.allclose(a[..., 7:11, :], b[..., 7:11, :])
    torch.testing.assert_close(a[..., 11:, :], b[..., 11:, :])  # out of the window


def test_leading_batch_axes_broadcast_the_mask():
    q, k, v, g = _core_inputs(4, 6, kv_heads=1, lead=(2, 3))  # (b t h n d)
    mask = torch.rand(3, 1, 4, 6, generator=g) > 0.4  # one mask per block t
    out = attention_sdpa(q, k, v, mask=mask)
    for t in range(3):
        ref = attention_naive(q[:, t], k[:, t], v[:, t], mask=mask[t])
        torch.testing.assert_close(out[:, t], ref)


def test_split_and_merge_heads():
    x = torch.randn(2, 5, 3 * 4 * 8)
    q, k, v = split_heads(x, 4)
    assert q.shape == (2, 4, 5, 8)
    torch.testing.assert_close(k[:, 1, :, 2], x[..., 32 + 8 + 2])  # (t h d) order
    torch.testing.assert_close(merge_heads(v), x[..., 64:])
    (one,) = split_heads(x, 12, parts=1)
    torch.testing.assert_close(merge_heads(one), x)


def test_rotary_at_positions_equals_offsets():
    rotary = RotaryEmbedding(8).double()
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    at_offset = rotary(x, 4)
    torch.testing.assert_close(rotary(x, torch.arange(4, 9)), at_offset)
    torch.testing.assert_close(rotary(x, torch.arange(4.0, 9.0)), at_offset)
    # today's formula, written out: pair i rotated by p * 10000^(-2i/8)
    theta = 10_000.0 ** (-torch.arange(0, 8, 2).double() / 8)
    angle = torch.arange(4.0, 9.0).double()[:, None] * theta
    x1, x2 = x[..., 0::2], x[..., 1::2]
    expected = torch.stack(
        (x1 * angle.cos() - x2 * angle.sin(), x1 * angle.sin() + x2 * angle.cos()), -1
    ).flatten(-2)
    torch.testing.assert_close(at_offset, expected)
    half = rotary(x, torch.arange(5) + 0.5)  # float positions: still relative
    whole = rotary(x)
    dot = (half[..., 0, :] * half[..., 3, :]).sum(-1)
    torch.testing.assert_close(dot, (whole[..., 0, :] * whole[..., 3, :]).sum(-1))


def test_core_bad_input_names_the_argument():
    q, k, v, _ = _core_inputs(4, 4, heads=4, kv_heads=3)
    with pytest.raises(ValueError, match="heads"):
        attention_naive(q, k, v)
    q, k, v, _ = _core_inputs(4, 4)
    with pytest.raises(ValueError, match="mask must be boolean"):
        attention_sdpa(q, k, v, mask=torch.ones(4, 4))
    with pytest.raises(ValueError, match="window"):
        attention_naive(q, k, v, window=0)
    with pytest.raises(ValueError, match="look_back"):
        local_attention(q, k, v, 2, look_back=0)
    with pytest.raises(ValueError, match="positions"):
        RotaryEmbedding(8)(q, torch.arange(3))


def test_online_softmax_step_rescales_to_the_whole_row():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(1, 2, 3, 10, generator=g, dtype=torch.float64) * 5
    v = torch.randn(1, 2, 10, 4, generator=g, dtype=torch.float64)
    m = torch.full((1, 2, 3), float("-inf"), dtype=torch.float64)
    l, acc = torch.zeros_like(m), torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    for cols in (slice(0, 4), slice(4, 10)):  # two key blocks, the max moves
        m, l, acc = online_softmax_step(m, l, acc, s[..., cols], v[:, :, cols])
    torch.testing.assert_close(m + l.log(), torch.logsumexp(s, -1))
    torch.testing.assert_close(acc / l[..., None], torch.softmax(s, -1) @ v)
