import math

import pytest
import torch

from minimodels.dilated import (
    DilatedAttention,
    LongNetTransformer,
    attend_sparse,
    branch_mask,
    combine_branches,
    dilated_attention,
    dilated_attention_reference,
    dilated_branch,
)
from minimodels.lm import LM, mixer_factory
from minimodels.testing import assert_causal, assert_same

# (segment_lengths, dilation_rates, heads, n): single and mixed branches, n not a
# multiple of w, w > n, rates that need every head's offset.
CONFIGS = [
    ((4,), (1,), 1, 10),
    ((8,), (2,), 2, 21),
    ((4, 8, 16), (1, 2, 4), 4, 37),
    ((8, 16), (2, 4), 4, 29),
    ((4, 64), (1, 8), 8, 19),
]


def qkv(h, n, d=6, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("dedupe", [False, True])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("segs, rates, heads, n", CONFIGS)
def test_equals_dense_union_reference(segs, rates, heads, n, causal, dedupe):
    def fast(q, k, v):
        return dilated_attention(q, k, v, segs, rates, causal=causal, dedupe=dedupe)

    def ref(q, k, v):
        return dilated_attention_reference(
            q, k, v, segs, rates, causal=causal, dedupe=dedupe
        )

    assert_same(fast, ref, qkv(heads, n), rtol=1e-10, atol=1e-12)


def test_dedupe_reference_is_boolean_union_attention():
    segs, rates, heads, n = (4, 8, 16), (1, 2, 4), 4, 23
    q, k, v = qkv(heads, n)
    union = torch.zeros(heads, n, n, dtype=torch.bool)
    for w, r in zip(segs, rates):
        union |= branch_mask(n, heads, w, r, causal=True)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    want = torch.softmax(s.masked_fill(~union, float("-inf")), -1) @ v
    got = dilated_attention(q, k, v, segs, rates, causal=True, dedupe=True)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_mixture_weights_are_softmax_denominators():
    # eq. 10: O = sum_k s_k O_k / sum_k s_k with s_k the branch's denominator.
    q, k, v = qkv(2, 16)
    outs, lses = zip(
        *(
            dilated_branch(q, k, v, w, r, causal=True, scale=0.5)
            for w, r in [(4, 1), (16, 2)]
        )
    )
    s = [lse.exp() for lse in lses]
    want = (s[0][..., None] * outs[0] + s[1][..., None] * outs[1]) / (s[0] + s[1])[
        ..., None
    ]
    torch.testing.assert_close(combine_branches(outs, lses), want)


def test_pattern_positions_and_heads():
    # v = one-hot positions and q = k = 0: head h's output row i is the uniform
    # average of the keys it sees, so (o > 0) is the pattern the fast path used.
    segs, rates, heads, n = (4, 8, 16), (2, 4, 8), 8, 40
    q = torch.zeros(1, heads, n, 4, dtype=torch.float64)
    v = torch.eye(n, dtype=torch.float64).expand(1, heads, n, n)
    o = dilated_attention(q, q, v, segs, rates, causal=True)[0]  # (h n n)
    union = sum(
        branch_mask(n, heads, w, r, causal=True).long() for w, r in zip(segs, rates)
    )
    assert torch.equal(o > 0, union > 0)
    seen = (o > 0).any(-1)  # (h n): query i attends to something in head h
    idx = torch.arange(n)
    assert torch.equal(o[:, idx, idx] > 0, seen)  # every position sees itself
    assert seen.any(0).all()  # the heads together cover every position
    for r in rates:  # in a branch alone, head j keeps exactly positions j mod r
        b = branch_mask(n, heads, 4 * r, r, causal=True).any(-1)
        assert torch.equal(b, idx[None, :] % r == torch.arange(heads)[:, None] % r)


def test_empty_rows_and_padding_give_zero_not_nan():
    q, k, v = qkv(2, 5)
    o, lse = attend_sparse(
        q[:, :, None], k[:, :, None], v[:, :, None],
        torch.arange(5).expand(2, 1, 5), torch.arange(5).expand(2, 1, 5) + 10,
        n=10, causal=True, scale=1.0,
    )  # fmt: skip
    assert torch.isinf(lse).all() and (o == 0).all()


@pytest.mark.parametrize("n", [1, 7, 33])
def test_module_is_causal_and_matches_reference(n):
    torch.manual_seed(0)
    attn = DilatedAttention(16, 4, segment_lengths=(4, 16), dilation_rates=(1, 4))
    attn = attn.double()
    x = torch.randn(2, n, 16, dtype=torch.float64)
    assert_causal(attn, x, positions=sorted({0, n // 2, n - 1}), atol=1e-12)

    def ref(x):
        q, k, v = attn.qkv(x)
        return attn.out(dilated_attention_reference(q, k, v, (4, 16), (1, 4)))

    assert_same(attn, ref, [x], rtol=1e-10, atol=1e-12)


def test_non_causal_module_sees_the_future():
    torch.manual_seed(0)
    attn = DilatedAttention(8, 2, 2, 8, causal=False)
    x = torch.randn(1, 16, 8)
    y = x.clone()
    y[:, -1] += 1.0
    assert not torch.allclose(attn(x)[:, -7], attn(y)[:, -7])


def test_qk_norm_and_keyword_construction_for_lm():
    torch.manual_seed(0)
    attn = DilatedAttention(32, heads=4, dilation_rate=2, segment_size=8, qk_norm=True)
    assert attn(torch.randn(2, 19, 32)).shape == (2, 19, 32)
    mixer = mixer_factory(
        "dilated", heads=4, segment_lengths=(8, 32), dilation_rates=(1, 4)
    )
    lm = LM(256, 32, 2, mixer)
    ids = torch.randint(0, 256, (2, 40))
    assert lm(ids).shape == (2, 40, 256)
    assert_causal(lm, ids, positions=[5, 39], atol=1e-5)


def test_longnet_transformer_is_causal():
    torch.manual_seed(0)
    model = LongNetTransformer(
        100, 32, 2, dim_head=8, heads=4, ff_mult=2, segment_lengths=(8, 16),
        dilation_rates=(1, 2),
    )  # fmt: skip
    ids = torch.randint(0, 100, (2, 30))
    assert model(ids).shape == (2, 30, 100)
    assert_causal(model, ids, positions=[0, 11, 29], atol=1e-5)


README_1 = """
import torch
from minimodels.dilated import DilatedAttention
# model config
dim = 512
heads = 8
dilation_rate = 2
segment_size = 64
# input data
batch_size = 32
seq_len = 8192
# create model and data
model = DilatedAttention ( dim , heads , dilation_rate , segment_size , qk_norm = True )
x = torch . randn (( batch_size , seq_len , dim ))
output = model ( x )
print ( output )
"""

README_2 = """
import torch
from minimodels.dilated import LongNetTransformer
longnet = LongNetTransformer (
num_tokens = 20000 ,
dim = 512 ,
depth = 6 ,
dim_head = 64 ,
heads = 8 ,
ff_mult = 4 ,
)
tokens = torch . randint ( 0 , 20000 , ( 1 , 512 ))
logits = longnet ( tokens )
print ( logits )
"""


def test_seed_readme_examples_run_with_only_the_import_changed():
    # The seed's text (spaces and all) with `long_net` -> `minimodels.dilated`.
    # One more change, for CI's 2 cores only: the first example's batch of 32
    # sequences of 8192 tokens (about a minute there) becomes 2 sequences.
    small = README_1.replace("batch_size = 32", "batch_size = 2")
    assert small != README_1
    scope: dict = {}
    with torch.inference_mode():
        exec(small, scope)
        exec(README_2, scope)
    assert scope["output"].shape == (2, 8192, 512)
    assert torch.isfinite(scope["output"]).all()
    assert scope["logits"].shape == (1, 512, 20000)


def test_bad_configs_give_clear_errors():
    with pytest.raises(ValueError, match="dilation_rate"):
        DilatedAttention(16, 4, dilation_rate=3, segment_size=8)
    with pytest.raises(ValueError, match="heads .* smallest dilation rate"):
        DilatedAttention(16, 1, dilation_rate=2, segment_size=8)
    with pytest.raises(ValueError, match="same length"):
        DilatedAttention(16, 4, segment_lengths=(8, 16), dilation_rates=(1,))
    with pytest.raises(ValueError, match="both segment_lengths and dilation_rates"):
        DilatedAttention(16, 4, segment_lengths=(8, 16))
    with pytest.raises(ValueError, match="segment_length must be positive"):
        DilatedAttention(16, 4, segment_size=0)
    with pytest.raises(ValueError, match="heads"):
        DilatedAttention(15, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(b n c\)"):
        DilatedAttention(16, 4)(torch.randn(16, 16))
    with pytest.raises(ValueError, match="at least one branch"):
        DilatedAttention(16, 4, segment_lengths=(), dilation_rates=())


def test_benchmark_runs_at_toy_size(tmp_path):
    from benchmarks.dilated import main
    from minimodels import bench

    out = tmp_path / "dilated.json"
    rows = main(
        ["--sizes", "64", "128", "--dim", "16", "--heads", "2", "--w0", "8",
         "--branches", "2", "--dense-max", "64", "--repeats", "1", "--out", str(out)]
    )  # fmt: skip
    data = bench.load_json(out)
    assert data["results"]["rows"] == rows
    assert {(r["layer"], r["n"]) for r in rows} == {
        ("dilated", 64), ("dilated", 128), ("dense", 64)
    }  # fmt: skip
    assert data["results"]["config"]["segment_lengths"] == [8, 16]
    assert all(r["min_s"] > 0 for r in rows)
