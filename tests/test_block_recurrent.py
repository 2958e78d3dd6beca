import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from minimodels.attention import RotaryEmbedding
from minimodels.block_recurrent import (
    BlockAttention,
    BlockRecurrentLM,
    BlockRecurrentTransformer,
    RecurrentTrainWrapper,
)
from minimodels.block_recurrent_cell import window_mask
from minimodels.data import distant_recall
from minimodels.lm import Shell
from minimodels.testing import assert_causal, assert_same


def small_model(**options) -> BlockRecurrentTransformer:
    config = dict(
        num_tokens=17, dim=16, depth=2, dim_head=8, heads=2, max_seq_len=12,
        block_width=4, num_state_vectors=3, recurrent_layers=(1,),
    )  # fmt: skip
    config.update(options)
    torch.manual_seed(0)
    return BlockRecurrentTransformer(**config).double().eval()


OPTIONS = [
    {},
    {"gate": "lstm", "single_head_kv": True},
    {"dynamic_pos_bias": True, "recurrent_layers": (2,)},
    {"use_compressed_mem": True, "compressed_mem_factor": 2},
    {"recurrent_layers": ()},
    {"state_mlp": True, "gate": "lstm", "use_compressed_mem": True,
     "compressed_mem_factor": 4},
]  # fmt: skip


def attend(q, k, v, mask=None):
    """Softmax attention written out, k and v with 1 or h heads."""
    k, v = (t.expand(*q.shape[:2], *t.shape[2:]) for t in (k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s.softmax(-1) @ v


def reference_layer(layer: BlockAttention, x: torch.Tensor):
    """The same layer written plainly over the whole sequence: a banded causal
    mask with absolute rotary positions, then the states block by block (each
    whole block updates them; a last partial block only reads them)."""
    b, n, _ = x.shape
    w, h, kh = layer.w, layer.heads, layer.kv_heads
    split = lambda t, hh: rearrange(t, "b n (h d) -> b h n d", h=hh)  # noqa: E731
    q = split(layer.to_q(x), h)
    k, v = (split(t, kh) for t in layer.to_kv(x).chunk(2, -1))
    rot = RotaryEmbedding(q.shape[-1]).to(x.dtype)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    out = attend(rot(q), rot(k), v, mask=(j <= i) & (j > i - w))
    if not layer.num_state_vectors:
        return layer.to_out(rearrange(out, "b h n d -> b n (h d)")), None
    c = layer.initial_state.expand(b, -1, -1)
    qc, cross = split(layer.to_q_cross(x), h), []
    for start in range(0, n, w):
        blk = slice(start, start + w)
        s = layer.state_norm(c) + layer.state_ids
        q_self, q_cross = (split(t, h) for t in layer.state_to_q(s).chunk(2, -1))
        sk, sv = (split(t, kh) for t in layer.state_to_kv(s).chunk(2, -1))
        cross.append(attend(qc[:, :, blk], sk, sv))
        if start + w > n:
            break
        hs = torch.cat(
            (attend(q_self, sk, sv), attend(q_cross, k[:, :, blk], v[:, :, blk])), -1
        )
        c = layer.gate(c, layer.state_out(rearrange(hs, "b h s d -> b s (h d)")))
        if layer.state_mlp:  # the paper's full cell: MLP and a second gate
            c = layer.mlp_gate(c, layer.mlp(layer.mlp_norm(c)))
    out = torch.cat((out, torch.cat(cross, dim=2)), dim=-1)
    return layer.to_out(rearrange(out, "b h n d -> b n (h d)")), c


@pytest.mark.parametrize("n", [1, 3, 4, 9, 12])
@pytest.mark.parametrize(
    "options",
    [{}, {"gate": "lstm", "single_head_kv": True}, {"state_mlp": True}],
)
@pytest.mark.parametrize("states", [0, 3])
def test_layer_equals_plain_reference(n, options, states):
    torch.manual_seed(n)
    layer = BlockAttention(
        16, heads=2, dim_head=8, block_width=4, num_state_vectors=states, **options
    ).double()
    x = torch.randn(2, n, 16, dtype=torch.float64)
    out, _, c = layer(x)
    ref, ref_c = reference_layer(layer, x)
    torch.testing.assert_close(out, ref)
    if states:
        torch.testing.assert_close(c, ref_c)


@pytest.mark.parametrize("n", [2, 5, 8, 11])
@pytest.mark.parametrize(
    "options",
    [{}, {"dynamic_pos_bias": True}, {"compressed_mem_factor": 2, "gate": "lstm"}],
)
def test_sdpa_path_equals_naive(n, options):
    torch.manual_seed(0)
    slow = BlockAttention(
        16, heads=2, dim_head=8, block_width=4, num_state_vectors=3, **options
    ).double()
    fast = copy.deepcopy(slow)
    fast.fast = True
    mem = torch.randn(2, 2, 2, 3, 8, dtype=torch.float64)
    x = torch.randn(2, n, 16, dtype=torch.float64)
    assert_same(lambda x, m: fast(x, m)[0], lambda x, m: slow(x, m)[0], [x, mem])


@pytest.mark.parametrize("options", OPTIONS)
def test_causal_within_and_across_blocks(options):
    model = small_model(**options)
    ids = torch.randint(0, 17, (2, 12))
    assert_causal(lambda s: model(s)[0], ids, positions=[0, 2, 3, 4, 7, 11])
    wrapper = RecurrentTrainWrapper(model, segment_len=4)
    ids = torch.randint(0, 17, (2, 22))
    assert_causal(lambda s: wrapper.logits(s)[0], ids, positions=[0, 5, 13, 21])


def test_state_carries_information_beyond_the_window():
    """Without states a token reaches depth * block_width positions ahead at most;
    with states it reaches every later block."""
    ids = torch.randint(0, 17, (1, 36))
    moved = {}
    for name, options in (("xl", {"recurrent_layers": ()}), ("rec", {})):
        wrapper = RecurrentTrainWrapper(small_model(**options))
        other = ids.clone()
        other[0, 0] = (ids[0, 0] + 1) % 17
        diff = (wrapper.logits(ids)[0] - wrapper.logits(other)[0]).abs().amax(-1)
        moved[name] = diff[0]
    assert moved["xl"][8:].max() == 0  # 2 layers x 4 tokens: blind from 8 on
    assert (moved["rec"][8:] > 0).all()
    off = small_model(carry_states=False)
    wrapper = RecurrentTrainWrapper(off)
    other = ids.clone()
    other[0, 0] = (ids[0, 0] + 1) % 17
    diff = (wrapper.logits(ids)[0] - wrapper.logits(other)[0]).abs().amax(-1)
    assert diff[0, 8:].max() == 0  # recurrence switched off


@pytest.mark.parametrize("options", OPTIONS)
def test_block_by_block_equals_wrapper(options):
    model = small_model(**options)
    ids = torch.randint(0, 17, (2, 31))
    mems, states, outs = None, None, []
    for chunk in ids.split(12, dim=1):
        logits, mems, states = model(chunk, xl_memories=mems, states=states)
        outs.append(logits)
    wrapper = RecurrentTrainWrapper(model)
    logits, w_mems, w_states = wrapper.logits(ids)
    torch.testing.assert_close(torch.cat(outs, 1), logits)
    for a, b in zip(mems + states, w_mems + w_states):
        torch.testing.assert_close(a, b)
    # segments of one block give the same answer as segments of three
    small = RecurrentTrainWrapper(model, segment_len=4)
    torch.testing.assert_close(small.logits(ids)[0], logits)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(wrapper(ids), loss)


@pytest.mark.parametrize("options", OPTIONS)
def test_memory_and_state_shapes_for_every_length(options):
    """Memories keep memory_len tokens plus those of an unfinished block."""
    model = small_model(**options)
    kv = 1 if options.get("single_head_kv") else 2
    keep = 8 if options.get("use_compressed_mem") else 4
    num_recurrent = len(model.recurrent_layers)
    prior = model(torch.randint(0, 17, (2, 2)))
    for n in range(1, 13):
        for mems, states, m in ((None, None, 0), (*prior[1:], 2)):
            _, new_mems, new_states = model(torch.randint(0, 17, (2, n)), mems, states)
            assert len(new_mems) == 2 and len(new_states) == num_recurrent
            for mem in new_mems:
                assert mem.shape == (2, 2, kv, min(n + m, keep + (n + m) % 4), 8)
            for state in new_states:
                assert state.shape == (2, 3, 16)


SPLITS = [[12], [5, 7], [1, 3, 8], [3, 1, 1, 7], [11, 1], [4, 4, 4]]


@pytest.mark.parametrize("options", OPTIONS)
def test_any_split_equals_one_pass(options):
    """Segments that end inside a block continue exactly: the logits of every
    split of a sequence equal one pass, and so do the final memories/states."""
    model = small_model(**options)
    ids = torch.randint(0, 17, (2, 12))
    one_pass, ref_mems, ref_states = model(ids)
    for split in SPLITS:
        mems, states, outs = None, None, []
        for chunk in ids.split(split, dim=1):
            logits, mems, states = model(chunk, mems, states)
            outs.append(logits)
        torch.testing.assert_close(torch.cat(outs, 1), one_pass, msg=str(split))
        for a, b in zip(mems + states, ref_mems + ref_states):
            torch.testing.assert_close(a, b)
    long = torch.randint(0, 17, (2, 37))
    whole = RecurrentTrainWrapper(model).logits(long)[0]
    for segment_len in (1, 5, 7, 11):
        wrapper = RecurrentTrainWrapper(model, segment_len=segment_len)
        torch.testing.assert_close(wrapper.logits(long)[0], whole)


def test_unfinished_block_leaves_the_state_alone():
    model = small_model()
    ids = torch.randint(0, 17, (1, 7))
    _, _, after_one_block = model(ids[:, :4])
    _, mems, after_seven = model(ids)
    torch.testing.assert_close(after_seven[0], after_one_block[0])
    assert mems[0].shape[3] == 4 + 3  # a block of memory + the unfinished 3


@pytest.mark.parametrize("state_mlp", [False, True])
def test_gradients_reach_state_parameters(state_mlp):
    model = small_model(gate="lstm", state_mlp=state_mlp).train()
    wrapper = RecurrentTrainWrapper(model, segment_len=4, truncate_every=None)
    wrapper(torch.randint(0, 17, (2, 13))).backward()
    layer = model.attns[0]
    for name in ("initial_state", "state_ids"):
        grad = getattr(layer, name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    extra = [*layer.mlp.parameters(), *layer.mlp_gate.parameters()] if state_mlp else []
    for p in [*layer.gate.parameters(), *layer.state_to_kv.parameters(), *extra]:
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_truncation_detaches_between_segments():
    model = small_model().train()
    ids = torch.randint(0, 17, (1, 16))
    _, mems, states = RecurrentTrainWrapper(model, segment_len=4).logits(ids)
    assert not states[0].requires_grad and not mems[0].requires_grad
    full = RecurrentTrainWrapper(model, segment_len=4, truncate_every=None)
    _, mems, states = full.logits(ids)
    assert states[0].requires_grad and mems[0].requires_grad
    _, _, states = model(ids[:, :4])
    assert not states[0].requires_grad  # the model detaches by default


@pytest.mark.parametrize(
    "options", [{}, {"use_compressed_mem": True, "compressed_mem_factor": 2}]
)
def test_generate_with_cache_equals_greedy_decoding(options):
    model = small_model(**options)
    wrapper = RecurrentTrainWrapper(model, segment_len=8)
    prime = torch.randint(0, 17, (2, 6))
    new = wrapper.generate(prime, 27, temperature=0.0)
    assert new.shape == (2, 21)
    full = torch.cat((prime, new), dim=1)
    logits = wrapper.logits(full)[0]
    assert torch.equal(logits[:, 5:-1].argmax(-1), new)
    sampled = wrapper.generate(prime, 9, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (2, 3) and sampled.max() < 17


def test_generate_checks_its_sampling_arguments_like_lm():
    wrapper = RecurrentTrainWrapper(small_model())
    prime = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature must be >= 0, got -1"):
        wrapper.generate(prime, 6, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k must be a positive integer or None"):
        wrapper.generate(prime, 6, top_k=0)
    top1 = wrapper.generate(prime, 9, top_k=1, generator=torch.Generator())
    assert torch.equal(top1, wrapper.generate(prime, 9, temperature=0.0))


def test_train_adapter_gives_logits():
    model = small_model()
    lm = BlockRecurrentLM(RecurrentTrainWrapper(model))
    assert lm(torch.randint(0, 17, (3, 25))).shape == (3, 25, 17)


def test_the_shell_and_its_loss_protocol():
    model = small_model()
    assert isinstance(model, Shell) and model.head.out_features == 17
    ids, targets = torch.randint(0, 17, (2, 30)), torch.randint(0, 17, (2, 30))
    targets[:, :7] = -100  # skipped
    logits = RecurrentTrainWrapper(model).logits(ids)[0]  # 30 > max_seq_len
    want = F.cross_entropy(logits[:, 7:].flatten(0, 1), targets[:, 7:].flatten())
    torch.testing.assert_close(model.loss(ids, targets), want)
    lm = BlockRecurrentLM(RecurrentTrainWrapper(model))
    torch.testing.assert_close(lm.loss(ids, targets), want)
    with pytest.raises(ValueError, match="targets must have the shape of ids"):
        model.loss(ids, targets[:, 1:])


def test_window_mask_by_hand():
    # blocks of 3: query i sees [previous block, current block] keys i < j <= i + 3,
    # after 2 always-visible compressed slots
    assert window_mask(3, 2).int().tolist() == [
        [1, 1, 0, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 1, 1, 0],
        [1, 1, 0, 0, 0, 1, 1, 1],
    ]


def test_seed_readme_example_runs():
    from minimodels.block_recurrent import BlockRecurrentTransformer

    torch.manual_seed(0)
    model = BlockRecurrentTransformer(
        num_tokens=20000,  # vocab size
        dim=512,  # model dimensions
        depth=6,  # depth
        dim_head=64,  # attention head dimensions
        heads=8,  # number of attention heads
        max_seq_len=1024,  # the total receptive field of the transformer
        block_width=512,  # block size
        num_state_vectors=512,  # number of state vectors
        recurrent_layers=(4,),  # where to place the recurrent layer(s)
        use_compressed_mem=False,  # whether to use compressed memories
        compressed_mem_factor=4,  # compression factor of compressed memories
        use_flash_attn=True,  # use flash attention, if on pytorch 2.0
    )
    seq = torch.randint(0, 2000, (1, 1024))
    with torch.no_grad():
        out, mems1, states1 = model(seq)
        out, mems2, states2 = model(seq, xl_memories=mems1, states=states1)
        out, mems3, states3 = model(seq, xl_memories=mems2, states=states2)
    assert out.shape == (1, 1024, 20000)
    assert len(mems3) == 6 and mems3[0].shape == (2, 1, 8, 512, 64)
    assert len(states3) == 1 and states3[0].shape == (1, 512, 512)
    assert not torch.equal(states2[0], states3[0])


def test_bad_input_gives_clear_errors():
    model = small_model()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.randint(0, 17, (2, 13)))
    _, mems, states = model(torch.randint(0, 17, (2, 5)))
    with pytest.raises(ValueError, match=r"states\[0\] must have shape \(2, 3, 16\)"):
        model(torch.randint(0, 17, (2, 5)), mems, [states[0][:, :2]])
    with pytest.raises(ValueError, match="one tensor per recurrent layer"):
        model(torch.randint(0, 17, (2, 5)), mems, states * 2)
    with pytest.raises(ValueError, match=r"xl_memories\[1\]"):
        model(torch.randint(0, 17, (2, 5)), [mems[0], mems[1][:, :1]], states)
    with pytest.raises(ValueError, match="one tensor per layer"):
        model(torch.randint(0, 17, (2, 5)), mems[:1], states)
    with pytest.raises(ValueError, match="seq"):
        model(torch.randint(0, 17, (5,)))
    with pytest.raises(ValueError, match="max_seq_len"):
        small_model(max_seq_len=10)
    with pytest.raises(ValueError, match="recurrent_layers"):
        small_model(recurrent_layers=(3,))
    with pytest.raises(ValueError, match="gate"):
        small_model(gate="gru")
    with pytest.raises(ValueError, match="compressed_mem_factor"):
        small_model(use_compressed_mem=True, compressed_mem_factor=3)
    with pytest.raises(ValueError, match="segment_len must be positive, got 0"):
        RecurrentTrainWrapper(model, segment_len=0)
    with pytest.raises(ValueError, match="segment_len"):
        RecurrentTrainWrapper(model, segment_len=13)
    with pytest.raises(ValueError, match="compressed_mem_factor must be positive"):
        small_model(use_compressed_mem=True, compressed_mem_factor=0)
    with pytest.raises(ValueError, match=r"xl_memories\[0\].*m < 8"):
        model(torch.randint(0, 17, (2, 5)), [m.repeat(1, 1, 1, 2, 1) for m in mems])
    with pytest.raises(ValueError, match="same position in a block"):
        model(torch.randint(0, 17, (2, 5)), [mems[0], mems[1][:, :, :, 1:]], states)
    with pytest.raises(ValueError, match="truncate_every"):
        RecurrentTrainWrapper(model, truncate_every=0)
    with pytest.raises(ValueError, match="length"):
        RecurrentTrainWrapper(model).generate(torch.zeros(1, 4, dtype=torch.long), 4)


def test_benchmark_runs_at_toy_size(tmp_path):
    from benchmarks.block_recurrent import main

    out = tmp_path / "brt.json"
    main(["--toy", "--steps", "1", "--threads", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    ours = data["results"]["minimodels"]
    assert ours["tokens_per_s"] > 0 and ours["parameters"] > 0


def test_distant_recall_puts_answers_beyond_the_window():
    x, y = distant_recall(64, block_width=8, gap_blocks=3, num_pairs=2, seed=1)
    assert x.shape == y.shape == (64, 40)
    answered = (y != -100).nonzero()
    assert answered[:, 1].min() == 38  # the queries close the last block
    for row, pos in answered.tolist():
        key = x[row, pos]
        first = (x[row] == key).nonzero()[0, 0]
        assert first < 8 and x[row, first + 1] == y[row, pos]  # stated in block 0
        assert pos - first > 2 * 8  # beyond two layers of 8-token windows
    with pytest.raises(ValueError, match="num_pairs"):
        distant_recall(2, block_width=4, gap_blocks=1, num_pairs=3)


def test_recall_grid_runs_at_toy_size(tmp_path):
    from benchmarks import block_recurrent_recall as grid

    out = tmp_path / "grid.json"
    rows = grid.main(
        ["--toy", "--tasks", "recall", "--contenders", "skip", "off",
         "--seeds", "0", "--lrs", "1e-3", "--out", str(out)]
    )  # fmt: skip
    assert [r["contender"] for r in rows] == ["skip", "off"]
    for r in rows:
        assert 0 <= r["val_acc"] <= 1 and 0 <= r["test_acc"] <= 1
        assert len(r["curve_steps"]) == len(r["curve_val_acc"]) > 0
    assert json.loads(out.read_text())["provenance"]["threads"] == 1
    table = grid.table(rows)
    assert {t["contender"] for t in table} == {"skip", "off"}


def test_unigram_baseline_is_the_entropy_of_the_frequencies():
    from benchmarks.block_recurrent_recall import unigram_bits

    two = torch.tensor([65, 66] * 50_000)
    assert 1.0 <= unigram_bits(two, two) < 1.01  # two equal symbols: one bit
    never_seen = unigram_bits(torch.tensor([67] * 10), two)
    assert abs(never_seen - math.log2(100_256)) < 1e-9  # add-one smoothed
