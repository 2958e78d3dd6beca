import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from minimodels.attention import attention_naive, local_attention
from minimodels.hierarchical import (
    Compress,
    HierarchicalTransformer,
    LocalAttention,
    hierarchical_costs,
    token_shift,
)
from minimodels.hourglass import Hourglass, Shorten, shift_right, upsample
from minimodels.lm import Shell
from minimodels.testing import assert_causal, assert_same

SEEDS = Path(__file__).parent / "seed_readmes"
# The three examples of the simple-hierarchical-transformer README, with only the
# import changed (kept as text: they are the seed's, not ours).
README = (
    (SEEDS / "simple_hierarchical_transformer.txt").read_text().split("# ---8<---\n")
)


def _shrink(code: str) -> str:
    """The README at toy size for CPU: short sequences, narrow and shallow."""
    code = code.replace(".cuda()", "")
    code = re.sub(r"\b(2048|1024)\b", "64", code)
    code = code.replace("20000", "100").replace("512", "32").replace("1024", "64")
    return re.sub(r"depth = \d+", "depth = 2", code)


def _run_readme(code: list[str]) -> tuple[dict, list[torch.Tensor]]:
    """Run the examples; the models of the last two also take a training step."""
    scope: dict = {}
    exec(code[0], scope)
    losses = []
    for snippet in code[1:]:
        exec(snippet, scope)
        model = scope["model"]
        ids = torch.randint(0, model.head.out_features, (1, model.seq_len))
        loss, _ = model(ids.to(model.head.weight.device), return_loss=True)
        loss.backward()
        losses.append(loss.detach())
    return scope, losses


def test_readme_examples_at_toy_size() -> None:
    scope, losses = _run_readme([_shrink(c) for c in README])
    assert scope["logits"].shape == (1, 64, 100)
    assert scope["model"].hierarchies == (1, 2, 4, 16)
    assert len(README) == 3 and len(losses) == 2
    assert all(torch.isfinite(v) for v in losses)


@pytest.mark.gpu
def test_readme_examples_verbatim() -> None:
    torch.set_default_device("cuda")
    try:
        scope, _ = _run_readme(README)
    finally:
        torch.set_default_device("cpu")
    assert scope["logits"].shape == (1, 2048, 20000)


@pytest.mark.parametrize("n", [1, 5, 13, 32])
@pytest.mark.parametrize("window", [1, 3, 8, 40])
def test_local_attention_matches_reference(n: int, window: int) -> None:
    """The window LocalAttention uses: the core's blocked local_attention is the
    band of the last ``window`` keys (windows longer than n included)."""
    g = torch.Generator().manual_seed(n * 100 + window)
    q, k, v = (torch.randn(2, 3, n, 4, generator=g, dtype=torch.float64) for _ in "qkv")
    assert_same(
        lambda a, b, c: local_attention(a, b, c, window),
        lambda a, b, c: attention_naive(a, b, c, window=window),
        [q, k, v],
    )


@pytest.mark.parametrize("window", [1, 3, None])
def test_local_attention_decodes_one_token_at_a_time(window: int | None) -> None:
    torch.manual_seed(0)
    attn = LocalAttention(16, heads=2, dim_head=8, window=window).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    full, state = attn(x), attn.init_state(2)
    for t in range(9):  # the cache grows; the band keeps the last window keys
        y, state = attn.step(x[:, t], state)
        torch.testing.assert_close(y, full[:, t], msg=lambda m, t=t: f"{t}: {m}")


def test_full_window_is_causal_attention() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    full = LocalAttention(16, heads=2, dim_head=8, window=None).double()
    wide = LocalAttention(16, heads=2, dim_head=8, window=3).double()
    wide.load_state_dict(full.state_dict())
    wide.window = 9  # a window as long as the sequence sees everything
    torch.testing.assert_close(wide(x), full(x))
    wide.window = 8  # one shorter: the last query loses the first key
    assert not torch.allclose(wide(x)[:, -1], full(x)[:, -1])
    torch.testing.assert_close(wide(x)[:, :-1], full(x)[:, :-1])


CONFIGS = {
    "flat": dict(dim=16, hierarchies=1),
    "flat-window": dict(dim=16, hierarchies=1, window_sizes=4),
    "flat-shift-only": dict(dim=16, hierarchies=1, window_sizes=0),
    "1-2": dict(dim=(16, 24), hierarchies=(1, 2), window_sizes=(4, None)),
    "1-2-8": dict(dim=16, hierarchies=(1, 2, 8), window_sizes=(3, 0, None)),
    "1-2-8-strided": dict(
        dim=(16, 24, 32),
        hierarchies=(1, 2, 8),
        hierarchical_stride=(1, 2, 8),
        window_sizes=(4, None, 0),
    ),
    "readme-3": dict(
        dim=(8, 16, 16, 24),
        ff_mult=(2, 2, 4, 4),
        dim_head=(4, 8, 8, 8),
        heads=(2, 2, 2, 1),
        hierarchies=(1, 2, 4, 16),
        hierarchical_stride=(1, 1, 1, 8),
        window_sizes=(2, 3, 4, None),
    ),
    "unsorted-3": dict(
        dim=16, hierarchies=(4, 1, 3), hierarchical_stride=(2, 1, 3), window_sizes=2
    ),
    "coarse-predicts": dict(dim=16, hierarchies=(2, 4), window_sizes=(None, 0)),
}


def _model(**config) -> HierarchicalTransformer:
    torch.manual_seed(0)
    base = dict(num_tokens=11, depth=2, seq_len=64, dim_head=8, heads=2)
    return HierarchicalTransformer(**{**base, **config}).double().eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_causal_every_configuration(name: str) -> None:
    model = _model(**CONFIGS[name])
    ids = torch.randint(0, 11, (2, 37), generator=torch.Generator().manual_seed(1))
    assert_causal(model, ids, range(37))  # 37: no factor divides it


def test_padding_changes_nothing() -> None:
    model = _model(**CONFIGS["1-2-8-strided"])
    ids = torch.randint(0, 11, (2, 64))
    full = model(ids)
    for n in (1, 7, 37, 63):
        torch.testing.assert_close(model(ids[:, :n]), full[:, :n])


def test_naive_pooling_leaks() -> None:
    ids = torch.randint(0, 11, (2, 32), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    leaky = Hourglass(11, 16, factor=4, shift=False).double().eval()
    with pytest.raises(AssertionError, match="output before position"):
        assert_causal(leaky, ids, range(32))
    # position 4j sees the token at 4j + 3 through the pooled token
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 11
    assert (leaky(ids)[:, 4] - leaky(changed)[:, 4]).abs().max() > 1e-3
    torch.manual_seed(0)
    assert_causal(Hourglass(11, 16, factor=4).double().eval(), ids, range(32))
    # the same leak in the hierarchical transformer's compressor
    model = _model(**CONFIGS["1-2-8-strided"])
    for compress in model.compressors:
        compress.shift = False
    with pytest.raises(AssertionError, match="output before position"):
        assert_causal(model, ids, range(32))


def test_compress_is_shift_then_pool() -> None:
    """Eq. 1: a conv with weights 1/k, stride k, left padding k - 1 is the mean
    of the windows of the sequence shifted right by k - 1."""
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    for k in (1, 2, 3, 4):
        compress = Compress(3, 3, k, k).double()
        if k > 1:
            torch.nn.init.constant_(compress.conv.weight, 1 / k)
            torch.nn.init.zeros_(compress.conv.bias)
            compress.proj = torch.nn.Identity()
        pooled = F.avg_pool1d(shift_right(x, k - 1).transpose(1, 2), k, k)
        torch.testing.assert_close(compress(x), pooled.transpose(1, 2))


def test_shorten_and_upsample_shapes() -> None:
    x = torch.randn(2, 12, 5)
    assert Shorten(5, 4)(x).shape == (2, 3, 5)
    assert upsample(torch.randn(2, 3, 5), 4, 10).shape == (2, 10, 5)
    torch.testing.assert_close(shift_right(x, 2)[:, 2:], x[:, :-2])
    y = token_shift(x)
    torch.testing.assert_close(y[:, 1:, 3:], x[:, :-1, 3:])
    torch.testing.assert_close(y[:, :, :3], x[:, :, :3])  # 5 channels: 3 stay
    assert (y[:, 0, 3:] == 0).all()
    with pytest.raises(ValueError, match="factor"):
        Shorten(5, 5)(x)


def test_fast_path_equals_plain() -> None:
    config = dict(CONFIGS["1-2-8-strided"], window_sizes=(4, None, 3))
    fast = _model(**config, use_flash_attn=True)
    plain = _model(**config, use_flash_attn=False)
    plain.load_state_dict(fast.state_dict())
    ids = torch.randint(0, 11, (2, 37))
    torch.testing.assert_close(fast(ids), plain(ids))
    fast(ids).sum().backward()
    plain(ids).sum().backward()
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=lambda m, n=name: f"{n}: {m}")


def test_return_loss_is_next_token_cross_entropy() -> None:
    model = _model(**CONFIGS["1-2"])
    ids = torch.randint(0, 11, (3, 20))
    loss, aux = model(ids, return_loss=True)
    logits = model(ids[:, :-1])
    expected = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(aux["cross_entropy"], expected)


def test_both_models_are_shells_with_one_loss_protocol() -> None:
    ids = torch.randint(0, 11, (3, 20))
    torch.manual_seed(0)
    for model in (_model(**CONFIGS["1-2"]), Hourglass(11, 16).double()):
        assert isinstance(model, Shell) and model.head.out_features == 11
        targets = ids.roll(-1, 1)
        targets[:, -1] = -100  # ignored
        want = F.cross_entropy(model(ids)[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        torch.testing.assert_close(model.loss(ids, targets), want)
    seed, _ = _model(**CONFIGS["1-2"])(ids, return_loss=True)
    torch.testing.assert_close(
        seed, _model(**CONFIGS["1-2"]).loss(ids[:, :-1], ids[:, 1:])
    )


def test_costs_shrink_with_compression() -> None:
    flat, strided = _model(dim=16), _model(**CONFIGS["1-2-8-strided"])
    (row,) = hierarchical_costs(flat.levels, 64)
    assert row["tokens"] == 64 and row["attention_macs"] == 2 * (64 * 65 // 2) * 16
    rows = {r["hierarchy"]: r for r in hierarchical_costs(strided.levels, 64)}
    assert [rows[k]["tokens"] for k in (1, 2, 8)] == [64, 32, 8]
    assert rows[8]["attention_macs"] == 0  # window 0: token shift only
    assert rows["merge"]["tokens"] == 64


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(dim=(16, 24)), "dim has 2 entries but hierarchies has 1"),
        (dict(hierarchies=(1, 2), heads=(2, 2, 2)), "heads has 3 entries"),
        (dict(hierarchies=(1, 2), dim_head=(8,)), "dim_head has 1 entries"),
        (dict(hierarchies=(1, 2), ff_mult=(2, 2, 2)), "ff_mult has 3"),
        (dict(hierarchies=(1, 2), window_sizes=(4,)), "window_sizes has 1"),
        (dict(hierarchies=(1, 4), hierarchical_stride=(1,)), "hierarchical_stride"),
        (dict(hierarchies=(1, 4), hierarchical_stride=(1, 3)), "must divide"),
        (dict(hierarchies=(1, 1)), "distinct"),
        (dict(hierarchies=(1, 0)), "hierarchies must be > 0"),
        (dict(hierarchies=(2, 4), hierarchical_stride=2), "needs hierarchical_stride"),
        (dict(window_sizes=-1), "window_sizes"),
        (dict(dim=0), "dim must be positive"),
        (dict(depth=0), "depth must be positive"),
        (dict(dim=16.5), "dim must be an integer, got 16.5"),
        (dict(depth=2.0), "depth must be an integer"),
        (dict(hierarchies=(1, 2.0)), "hierarchies[1] must be an integer"),
        (dict(hierarchies=(1, 2), window_sizes=(8.5, None)), "window_sizes must be an"),
        (dict(hierarchies=(1, 4), hierarchical_stride=(1, 2.0)), "hierarchical_stride"),
        (dict(heads=True), "heads must be an integer, got True"),
    ],
)
def test_bad_config_names_the_argument(config: dict, message: str) -> None:
    base = dict(num_tokens=11, dim=16, depth=1, seq_len=32, dim_head=8, heads=2)
    with pytest.raises(ValueError, match=re.escape(message)):
        HierarchicalTransformer(**{**base, **config})


def test_bad_input_names_the_argument() -> None:
    model = _model(dim=16)
    with pytest.raises(ValueError, match="exceeds seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="ids must have shape"):
        model(torch.zeros(65, dtype=torch.long))
    with pytest.raises(ValueError, match="depth must be 3 counts"):
        Hourglass(11, 16, depth=(1, 2))
    with pytest.raises(ValueError, match="ids is an empty sequence"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="ids must be integer tokens"):
        model(torch.zeros(1, 8))
    with pytest.raises(ValueError, match="factor must be an integer, got 4.5"):
        Hourglass(11, 16, factor=4.5)
    with pytest.raises(ValueError, match=r"depth\[1\] must be an integer"):
        Hourglass(11, 16, depth=(1, 2.0, 1))
    with pytest.raises(ValueError, match="ids is an empty sequence"):
        Hourglass(11, 16)(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="window must be an integer"):
        LocalAttention(16, heads=2, dim_head=8, window=3.5)


def test_benchmark_runs_at_toy_size(tmp_path) -> None:
    from benchmarks import hierarchical as benchmark
    from minimodels.bench import load_json

    out = tmp_path / "hierarchical.json"
    argv = ["--dim", "16", "--heads", "2", "--depth", "1", "--seq-len", "32"]
    benchmark.main([*argv, "--batch", "1", "--repeats", "1", "--out", str(out)])
    data = load_json(out)
    rows = data["results"]["rows"]
    models = {r["model"] for r in rows}
    assert {"ours (1, 2, 8)", "ours flat"} <= models
    assert all(r["tokens_per_s"] > 0 for r in rows)
    train_rows = [r for r in rows if r["mode"] == "train step"]
    assert all(r["activation_bytes"] > 0 for r in train_rows)
    assert data["environment"]["device_type"] == "cpu"


def test_trained_results_benchmark_runs_at_toy_size(tmp_path) -> None:
    from benchmarks import hierarchical_lm
    from minimodels import experiments
    from minimodels.lm import count_parameters

    out = tmp_path / "hierarchical_lm.json"
    argv = ["--contenders", "hourglass shifted", "(1, 2, 8)", "--seeds", "0"]
    rows = hierarchical_lm.main(
        [*argv, "--lrs", "3e-3", "--steps", "2", "--out", str(out)]
    )
    assert experiments.load(out)["rows"] == rows
    assert [r["contender"] for r in rows] == ["hourglass shifted", "(1, 2, 8)"]
    for r in rows:  # two steps from a uniform start: near log2(256) = 8 bits
        assert 4 < r["val_bits"] < 9 and 4 < r["test_bits"] < 9
    flat = count_parameters(hierarchical_lm.build("1 level", 0))
    assert abs(rows[1]["parameters"] / flat - 1) < 0.03
