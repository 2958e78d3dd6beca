"""The Triton FlashAttention kernels (minimodels.kernels.flash) against the naive
reference. On CPU they run in the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before the kernels are defined) in fp32, at small sizes: the
interpreter is slow, so most shapes use one batch and one head."""

from functools import partial

import pytest
import torch

pytest.importorskip("triton")

from minimodels.attention import attention_naive, online_softmax_forward  # noqa: E402
from minimodels.kernels.flash import (  # noqa: E402
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
