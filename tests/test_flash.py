"""The Triton FlashAttention kernels (minimodels.kernels.flash) against the naive
reference. On CPU they run in the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before the kernels are defined) in fp32, at small sizes: the
interpreter is slow, so most shapes use one batch and one head."""

from functools import partial

import pytest
import torch

pytest.importorskip("triton")

from minimodels.attention import attention_naive, causal_mask  # noqa: E402
from minimodels.flash import online_softmax_forward  # noqa: E402
from minimodels.kernels import flash, tiles  # noqa: E402
from minimodels.kernels.flash import (  # noqa: E402
    block_plan,
    flash_attention,
    flash_backward,
    flash_forward,
    flash_forward_block,
)
from minimodels.testing import assert_same  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
TOL = {"rtol": 1e-4, "atol": 1e-4}


def _qkv(n, m, d, *, b=1, h=1, dtype=torch.float32, device=DEVICE, seed=0):
    g = torch.Generator().manual_seed(seed + 1000 * n + m + d)
    shapes = ((b, h, n, d), (b, h, m, d), (b, h, m, d))
    return [torch.randn(s, generator=g).to(device, dtype) for s in shapes]


# N in {1, 17, 64, 200, 257}, head dims {16, 48, 64} cycled, q_len != k_len
CASES = [
    (1, 1, 16),
    (17, 17, 48),
    (64, 64, 64),
    (200, 200, 16),
    (257, 257, 48),
    (64, 64, 48),
    (17, 200, 64),
    (200, 17, 16),
    (33, 100, 48),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,m,d", CASES)
def test_flash_attention_equals_naive(n, m, d, causal):
    """Step 4 (the autograd Function): outputs and dQ/dK/dV."""
    assert_same(
        partial(flash_attention, causal=causal),
        partial(attention_naive, causal=causal),
        _qkv(n, m, d),
        **TOL,
    )


def test_batch_heads_scale_and_strides():
    """Several batches and heads, a custom scale, and a (b n h d) -> (b h n d)
    transposed view (non-contiguous inputs)."""
    qkv = _qkv(19, 23, 16, b=2, h=3)  # (b h n d), stored as (b n h d) below
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in qkv)
    assert not q.is_contiguous()
    for causal in (False, True):
        assert_same(
            partial(flash_attention, causal=causal, scale=0.2),
            partial(attention_naive, causal=causal, scale=0.2),
            (q, k, v),
            **TOL,
        )


def test_step1_one_block_kernel():
    q, k, v = (t[0, 0] for t in _qkv(37, 50, 48))
    o = flash_forward_block(q, k, v, block_m=16, block_n=16)
    ref = attention_naive(q[None, None], k[None, None], v[None, None])[0, 0]
    torch.testing.assert_close(o, ref, **TOL)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,m", [(40, 40), (23, 50), (50, 23)])
def test_steps2_and_3_with_small_blocks(n, m, causal):
    """Many small blocks (and BLOCK_M != BLOCK_N): the causal ranges, the skipped
    blocks and the ragged ends all get exercised; the LSE equals the ladder's."""
    q, k, v = _qkv(n, m, 16, h=2)
    o, lse = flash_forward(q, k, v, causal, block_m=16, block_n=32)
    ref_o, ref_lse = online_softmax_forward(q, k, v, causal)
    torch.testing.assert_close(o, ref_o, **TOL)
    torch.testing.assert_close(lse, ref_lse, **TOL)
    do = torch.randn_like(o)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    attention_naive(*leaves, causal=causal).backward(do)
    grads = flash_backward(do, q, k, v, o, lse, causal, block_m=32, block_n=16)
    for ours, ref in zip(grads, leaves):
        torch.testing.assert_close(ours, ref.grad, **TOL)


def test_rows_without_keys_are_zero():
    q, k, v = (t.requires_grad_() for t in _qkv(20, 4, 16))
    out = flash_attention(q, k, v, causal=True)
    assert torch.isfinite(out).all() and out[:, :, :16].abs().max() == 0
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad[:, :, :16].abs().max() == 0
    _, lse = flash_forward(q.detach(), k.detach(), v.detach(), True)
    assert torch.isneginf(lse[:, :, :16]).all() and torch.isfinite(lse[:, :, 16:]).all()


def test_causality():
    q, k, v = _qkv(40, 40, 16)
    base = flash_attention(q, k, v, causal=True)
    for t in (0, 17, 39):
        moved = v.clone()
        moved[:, :, t] += 1.0
        out = flash_attention(q, k, moved, causal=True)
        assert (out[:, :, :t] == base[:, :, :t]).all()
        assert (out[:, :, t:] != base[:, :, t:]).any()


def test_bad_input_gives_clear_errors():
    q, k, v = _qkv(8, 8, 16)
    with pytest.raises(ValueError, match="q must have shape"):
        flash_attention(q[0], k, v)
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        flash_attention(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="head dim"):
        big = torch.zeros(1, 1, 8, 160, device=q.device)
        flash_attention(big, big, big)
    with pytest.raises(ValueError, match="same dtype"):
        flash_attention(q, k.half(), v)
    with pytest.raises(ValueError, match="k and v"):
        flash_attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="block_m"):
        flash_forward(q, k, v, block_m=0)
    with pytest.raises(ValueError, match="k must be a floating-point tensor"):
        flash_attention(q, k.long(), v)


def _needed_tiles(n, m, causal, block_m, block_n, *, ragged_keys_need_mask):
    """Brute force from the mask itself: 0 no real row sees a key of the tile,
    1 every real row sees every key (and the tile is whole), 2 it needs a mask."""
    visible = causal_mask(n, m) if causal else torch.ones(n, m, dtype=torch.bool)
    rows, cols = -(-n // block_m), -(-m // block_n)
    need = torch.zeros(rows, cols, dtype=torch.long)
    for i in range(rows):
        for j in range(cols):
            tile = visible[i * block_m : (i + 1) * block_m, j * block_n :][:, :block_n]
            ragged = ragged_keys_need_mask and (j + 1) * block_n > m
            need[i, j] = 0 if not tile.any() else 1 if tile.all() and not ragged else 2
    return need


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [1, 7, 40, 64, 100])
@pytest.mark.parametrize("m", [1, 9, 50, 64, 130])
@pytest.mark.parametrize("block_m,block_n", [(16, 64), (32, 16)])
def test_block_plan_skips_and_masks_the_right_tiles(n, m, causal, block_m, block_n):
    """Step 4. The forward (and dQ) plan is exactly the brute force: it skips every
    tile no row needs and masks only where the causal mask or the ragged key end
    cuts the tile. The dK/dV plan visits exactly the needed tiles and never runs
    a tile unmasked that needs the mask (it may mask a tile only padded rows cut)."""
    blocks = {"block_m": block_m, "block_n": block_n}
    by_rows, by_cols = block_plan(n, m, causal, **blocks)
    need = _needed_tiles(n, m, causal, **blocks, ragged_keys_need_mask=True)
    assert torch.equal(by_rows, need)
    need = _needed_tiles(n, m, causal, **blocks, ragged_keys_need_mask=False)
    assert torch.equal(by_cols > 0, need > 0)
    assert not ((need == 2) & (by_cols == 1)).any()


def test_causal_plan_visits_about_half_the_tiles():
    by_rows, by_cols = block_plan(1024, 1024, True)
    assert by_rows.numel() == 256 and (by_rows > 0).sum() == 16 * 17 // 2
    assert (by_rows == 2).sum() == 16  # only the diagonal tiles are masked
    assert torch.equal(by_rows, by_cols)
    assert (block_plan(1024, 1024, False)[0] == 1).all()


def test_bf16_is_computed_in_fp32_under_the_interpreter():
    """The interpreter's bf16 tl.dot is wrong (values near 8e8): bf16 inputs run in
    fp32 there and come back in bf16, with bf16 gradients."""
    if tiles.interpreted():
        assert flash.compute_dtype(torch.bfloat16) == torch.float32
    q, k, v = (t.requires_grad_() for t in _qkv(33, 40, 16, dtype=torch.bfloat16))
    out = flash_attention(q, k, v, causal=True)
    assert out.dtype == torch.bfloat16
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = attention_naive(*exact, causal=True)
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)
    out.backward(torch.ones_like(out))
    ref.backward(torch.ones_like(ref))
    for ours, true in zip((q, k, v), exact):
        assert ours.grad.dtype == torch.bfloat16
        torch.testing.assert_close(ours.grad.double(), true.grad, rtol=5e-2, atol=5e-2)


def test_offsets_past_two_to_the_31():
    """A head that starts beyond element 2^31 of its storage: int32 offsets wrap
    (before the fix: a segmentation fault, or a wrong head on a GPU). The storage
    is 4 GiB of address space; only the pages of the three heads are touched."""
    stride_h, n, d, heads = 2**30 + 2**20, 16, 16, 3  # head 2 starts at 2^31 + 2^21
    try:
        size = 2 * stride_h + 3 * n * d
        storage = torch.empty(size, dtype=torch.float16, device=DEVICE)
    except RuntimeError:
        pytest.skip("cannot reserve 4 GiB of address space")
    shape, strides = (1, heads, n, d), (heads * stride_h, stride_h, d, 1)
    qkv = [storage.as_strided(shape, strides, i * n * d) for i in range(3)]
    small = _qkv(n, n, d, h=heads, dtype=torch.float16)
    for view, values in zip(qkv, small):
        view.copy_(values)
    o, _ = flash_forward(*qkv, block_m=16, block_n=16)
    ref = attention_naive(*(t.float() for t in small))
    torch.testing.assert_close(o.float(), ref, rtol=2e-3, atol=2e-3)


def test_autotune_key_buckets_the_lengths():
    """The autotune cache is keyed on the lengths rounded up to a power of two."""
    for tuned in (flash._fwd_tuned, flash._dkdv_tuned, flash._dq_tuned):
        assert tuned.keys == ["N_BUCKET", "M_BUCKET", "HEAD_DIM", "CAUSAL"]
        assert len(tuned.configs) == 24
    assert flash._buckets(1000, 1024) == (1024, 1024)
    assert flash._buckets(1025, 17) == (2048, 32)


@pytest.mark.gpu
def test_gpu_autotune_tunes_once_per_bucket():
    before = len(flash._fwd_tuned.cache)
    for n in (2100, 3000, 4096):  # one bucket (4096), an unusual head dim
        flash_forward(*_qkv(n, n, 40, dtype=torch.float16, device="cuda"))
    assert len(flash._fwd_tuned.cache) == before + 1
    flash_forward(*_qkv(4097, 4097, 40, dtype=torch.float16, device="cuda"))
    assert len(flash._fwd_tuned.cache) == before + 2


def test_import_minimodels_does_not_import_triton():
    import subprocess
    import sys

    code = (
        "import sys, minimodels, minimodels.attention; print('triton' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


# --- On a GPU: fp16/bf16 at large N ------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,m,d", [(4096, 4096, 64), (2048, 2048, 128),
                                   (1000, 3001, 96), (3001, 1000, 48)])  # fmt: skip
def test_gpu_low_precision(n, m, d, causal, dtype):
    q, k, v = _qkv(n, m, d, b=2, h=4, dtype=dtype, device="cuda")
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = [t.float().requires_grad_() for t in (q, k, v)]
    out = flash_attention(*leaves, causal=causal)
    expected = attention_naive(*ref, causal=causal)
    do = torch.randn_like(out)
    out.backward(do)
    expected.backward(do.float())
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)
    for ours, exact in zip(leaves, ref):
        torch.testing.assert_close(ours.grad.float(), exact.grad, rtol=tol, atol=tol)


def test_benchmark_toy_run(tmp_path):
    from benchmarks import flash as benchmark
    from minimodels.bench import load_json

    out = benchmark.main(
        ["--device", "cpu", "--seq-lens", "32", "--tokens", "32", "--hidden", "32",
         "--out", str(tmp_path / "flash.json")]
    )  # fmt: skip
    data = load_json(out)
    assert data["environment"]["device_type"] == "cpu"
    rows = data["results"]
    assert {r["provider"] for r in rows} == {"ours", "sdpa-math"}
    assert {r["mode"] for r in rows} == {"fwd", "bwd", "fwd+bwd"}
    assert len(rows) == 2 * 3 * 2  # providers x modes x causal
    assert all(r["tflops"] > 0 and r["heads"] == 2 for r in rows)
