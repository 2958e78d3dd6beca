"""benchmarks/ch00_recall.py at toy size, and the attention maps it reads."""

import torch
from einops import rearrange

from benchmarks import ch00_recall
from minimodels import experiments


def test_attention_maps_reproduce_each_mixer_output():
    model = ch00_recall.build("he", dim=32, heads=4, seed=0).eval()
    x, _ = ch00_recall.questions(seed=0, n=3)
    outputs = []
    hooks = [
        b.mixer.register_forward_hook(lambda m, a, out: outputs.append((a[0], out)))
        for b in model.blocks
    ]
    maps = ch00_recall.attention_maps(model, x)
    for h in hooks:
        h.remove()
    assert [tuple(p.shape) for p in maps] == [(3, 4, x.shape[1], x.shape[1])] * 2
    for block, p, (u, out) in zip(model.blocks, maps, outputs):
        assert torch.allclose(p.sum(-1), torch.ones(()))
        assert p.triu(1).abs().max() == 0  # causal: nothing from the future
        _, _, v = block.mixer._qkv(u)
        mixed = block.mixer.to_out(rearrange(p @ v, "b h n d -> b n (h d)"))
        torch.testing.assert_close(mixed, out, atol=1e-5, rtol=1e-5)


def test_induction_scores_find_a_planted_circuit(monkeypatch):
    x, _ = ch00_recall.questions(seed=0, n=5)
    n = x.shape[1]
    model = ch00_recall.build("he", dim=32, heads=4, seed=0)
    first = torch.full((5, 4, n, n), 0.0)
    first[:, 1] = torch.eye(n).roll(-1, 1).tril()  # head 1: the previous token
    first[:, 1, 0, 0] = 1.0
    second = torch.zeros(5, 4, n, n)
    for b in range(5):  # head 3 at the query: the value after the query's key
        j = int((x[b, :-1:2] == x[b, -1]).nonzero()[0]) * 2 + 1
        second[b, 3, -1, j] = 1.0
    monkeypatch.setattr(ch00_recall, "attention_maps", lambda m, x: [first, second])
    scores = ch00_recall.induction_scores(model, x)
    assert scores["prev_head"] == 1 and scores["prev_mass"] == 1.0
    assert scores["match_head"] == 3 and scores["match_fraction"] == 1.0


def test_benchmark_runs_at_toy_size(tmp_path):
    out = tmp_path / "ch00.json"
    cells = ch00_recall.cells([("he", 1e-3), ("gpt2_tied", 1e-3)], [0], steps=2, dim=16)
    rows = experiments.run_grid(ch00_recall.run, cells, out=out, progress=False)
    assert [r["contender"] for r in rows] == ["he", "gpt2_tied"]
    for row in rows:
        assert 0 <= row["test_acc"] <= 1 and 0 <= row["match_fraction"] <= 1
        assert row["curve_step"] == [2]
    tied = ch00_recall.build("gpt2_tied", dim=16, heads=4, seed=0)
    assert tied.head.weight is tied.embed.weight
    assert abs(tied.embed.weight.std().item() - 0.02) < 0.004
    assert experiments.load(out)["rows"] == rows
