import json

import pytest
import torch

from minimodels import bakeoff
from minimodels.lm import count_parameters
from minimodels.testing import assert_causal
from minimodels.train import TrainConfig

NAMES = list(bakeoff.CONTENDERS)


def test_every_chapter_mixer_is_a_contender():
    chapters = {chapter for chapter, _ in bakeoff.CONTENDERS.values()}
    assert chapters == {0, 2, 3, 4, 6, 7, 8}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 37, 64])
def test_contender_maps_ids_to_logits_causally(name, n):
    torch.manual_seed(0)
    model = bakeoff.build(name, vocab_size=11, dim=32, seq_len=64).eval()
    ids = torch.randint(0, 11, (2, n))
    assert model(ids).shape == (2, n, 11)
    if n > 1:
        assert_causal(model, ids, positions=[0, n // 2, n - 1], atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_width_for_gets_closest_to_the_target_size(name):
    dim = bakeoff.width_for(name, params=40_000, vocab_size=16, seq_len=64)

    def size(d):
        return count_parameters(bakeoff.build(name, vocab_size=16, dim=d, seq_len=64))

    def builds(d):
        try:
            size(d)
        except ValueError:  # e.g. H3's heads of 8, LongNet's 4 even-width heads
            return False
        return True

    neighbours = [d for d in (dim - 8, dim - 4, dim + 4, dim + 8) if builds(d)]
    assert len(neighbours) >= 2
    assert all(abs(size(dim) - 40_000) <= abs(size(d) - 40_000) for d in neighbours)


def test_bad_names_and_widths_are_refused():
    with pytest.raises(ValueError, match="unknown contender"):
        bakeoff.build("mamba", vocab_size=8, dim=32, seq_len=16)
    with pytest.raises(ValueError, match="dim must be a multiple of 4"):
        bakeoff.build("attention", vocab_size=8, dim=34, seq_len=16)
    with pytest.raises(ValueError, match="seq_len"):
        bakeoff.build("attention", vocab_size=8, dim=32, seq_len=0)


def test_run_trains_and_reports_a_row():
    config = TrainConfig(
        steps=4, batch_size=4, eval_every=2, eval_batches=1, progress=False
    )
    row = bakeoff.run(
        "s4d", bakeoff.recall_task(15, examples=64), params=10_000, config=config
    )
    assert row["task"] == "recall n=15" and 0 <= row["accuracy"] <= 1
    assert row["curve"]["step"] == [2, 4]
    json.dumps(row)  # a row is plain data


def test_bytes_task_scores_bits():
    from minimodels.data import ByteCorpus

    corpus = ByteCorpus(torch.arange(256).repeat(8), torch.arange(256).repeat(2))
    config = TrainConfig(
        steps=2, batch_size=2, eval_every=2, eval_batches=1, progress=False
    )
    row = bakeoff.run(
        "attention", bakeoff.bytes_task(corpus, 32), params=20_000, config=config
    )
    assert 0 < row["bits"] < 9


def test_speed_rows():
    rows = bakeoff.speed("hyena", [16, 32], dim=16, repeats=1)
    assert [r["n"] for r in rows] == [16, 32]
    assert all(r["median_s"] > 0 and r["peak_bytes"] > 0 for r in rows)


def test_grid_runs_every_pair_and_table_shows_them():
    config = TrainConfig(
        steps=2, batch_size=4, eval_every=2, eval_batches=1, progress=False
    )
    tasks = [
        bakeoff.recall_task(7, examples=16),
        bakeoff.induction_task(8, examples=16),
    ]
    rows = bakeoff.grid(tasks, params=8000, config=config, names=["s4d", "h3"])
    assert [(r["contender"], r["task"]) for r in rows] == [
        ("s4d", "recall n=7"),
        ("h3", "recall n=7"),
        ("s4d", "induction n=8"),
        ("h3", "induction n=8"),
    ]
    text = bakeoff.table(rows)
    assert text.splitlines()[0].split()[1:] == ["recall", "n=7", "induction", "n=8"]
    assert f"{rows[0]['accuracy']:.3f}" in text.splitlines()[1]
    with pytest.raises(ValueError, match="unknown contender"):
        bakeoff.grid(tasks, params=8000, config=config, names=["rnn"])


def _reach(model, n: int, layers: int) -> torch.Tensor:
    """(n n) bool: whether the input at j changes the residual stream at i
    after ``layers`` blocks."""
    x = model.embed(torch.randint(0, 8, (1, n))).detach().requires_grad_()
    h = x
    for block in model.blocks[:layers]:
        h = block(h)
    rows = [torch.autograd.grad(h[0, i].sum(), x, retain_graph=True)[0][0]
            for i in range(n)]  # fmt: skip
    return torch.stack(rows).abs().sum(-1) > 0


def test_dilated_contender_sees_longnets_pattern_and_the_query_sees_all():
    """One layer: i sees j <= i in its segment of 16, or j = i mod 4 (the r = 4
    branch, whose 4 heads cover every residue); two layers: the last position,
    recall's query, sees every token."""
    torch.manual_seed(0)
    model = bakeoff.build("dilated", vocab_size=8, dim=16, seq_len=31)
    i, j = torch.arange(31)[:, None], torch.arange(31)[None, :]
    longnet = (j <= i) & ((i // 16 == j // 16) | (i % 4 == j % 4))
    assert torch.equal(_reach(model, 31, 1), longnet)
    assert _reach(model, 31, 2)[-1].all()


TOY_CELL = {"contender": "attention", "seq_len": 7, "params": 3000, "steps": 3,
            "batch_size": 4, "lr": 3e-3, "seed": 0}  # fmt: skip


def test_cell_scores_1000_validation_and_test_questions_and_is_deterministic():
    first, again = bakeoff.cell(TOY_CELL), bakeoff.cell(TOY_CELL)
    assert first["test_acc"] == again["test_acc"] and first["curve"] == again["curve"]
    assert 0 <= first["val_acc"] <= 1 and first["width"] % 4 == 0
    assert first["curve"]["step"][-1] == 3 and first["cpu_s"] > 0
    train_data, val, test = bakeoff.recall_splits(7, 16, seed=0)
    assert len(val[0]) == len(test[0]) == bakeoff.QUESTIONS == 1000
    assert not torch.equal(val[0], test[0])  # separate questions
    other, _, _ = bakeoff.recall_splits(7, 16, seed=1)
    assert not torch.equal(train_data[0], other[0])  # each seed its own data
    assert bakeoff.cell({**TOY_CELL, "dim": 8})["width"] == 8
    json.dumps(first)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"learning_rate": 1e-3}, "unknown cell keys"),
        ({"lr": float("inf")}, "lr must be finite"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"task": "bytes"}, "task must be 'recall'"),
        ({"seq_len": 8}, "seq_len must be odd"),
    ],
)
def test_cell_refuses_bad_cells_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        bakeoff.cell({**TOY_CELL, **change})
    with pytest.raises(ValueError, match="a cell needs 'seed'"):
        bakeoff.cell({k: v for k, v in TOY_CELL.items() if k != "seed"})


def test_every_contender_has_a_learning_rate_from_the_grid():
    from benchmarks.bakeoff import ORDER

    assert set(bakeoff.BEST_LR) == set(bakeoff.CONTENDERS) == set(ORDER)
    assert len(bakeoff.LRS) >= 3  # every contender is tuned over 3 rates or more
    assert all(lr in bakeoff.LRS for lr in bakeoff.BEST_LR.values())


def test_the_recipe_warm_up_reaches_the_trainer(monkeypatch):
    seen = []
    real = bakeoff.train

    def spy(model, train_data, val, config):
        seen.append(config)
        return real(model, train_data, val, config)

    monkeypatch.setattr(bakeoff, "train", spy)
    bakeoff.cell(TOY_CELL)  # the cell leaves the warm-up to the recipe
    bakeoff.cell({**TOY_CELL, "warmup": 2})
    assert [c.warmup for c in seen] == [bakeoff.RECIPE["warmup"], 2]
    assert all(c.weight_decay == 0.0 for c in seen)


def test_benchmark_runs_at_toy_size_tunes_then_runs_new_seeds(tmp_path):
    from benchmarks import bakeoff as benchmark
    from minimodels import experiments

    out = tmp_path / "bakeoff.json"
    args = ["--contenders", "attention", "s4d", "--lrs", "1e-3", "1e-2", "--seeds",
            "0", "--new-seeds", "5", "--steps", "2", "--params", "3000",
            "--seq-len", "7", "--out", str(out)]  # fmt: skip
    result = benchmark.main(args)
    stored = experiments.load(out)
    assert stored["rows"] == result["rows"]
    assert "benchmarks.bakeoff" in stored["provenance"]["command"]
    order = [(r["contender"], r["lr"], r["seed"]) for r in stored["rows"]]
    best = {r["contender"]: r["lr"] for r in result["tuned"]}
    assert order == [
        ("attention", 1e-3, 0), ("attention", 1e-2, 0),
        ("attention", best["attention"], 5),
        ("s4d", 1e-3, 0), ("s4d", 1e-2, 0), ("s4d", best["s4d"], 5),
    ]  # fmt: skip
    for name in ("attention", "s4d"):
        scores = {r["lr"]: r["val_acc"] for r in stored["rows"]
                  if r["contender"] == name and r["seed"] == 0}  # fmt: skip
        assert scores[best[name]] == max(scores.values())
    assert [r["seed"] for r in result["new"]] == [5, 5]


def test_zoology_benchmark_runs_at_toy_size(tmp_path):
    from benchmarks import zoology
    from minimodels import experiments

    out = tmp_path / "zoology.json"
    args = ["--contenders", "attention", "hyena", "--widths", "8", "16",
            "--lengths", "9", "--seeds", "0", "--steps", "2", "--vocab-size", "8",
            "--out", str(out)]  # fmt: skip
    result = zoology.main(args)
    rows = experiments.load(out)["rows"]
    assert rows == result["rows"]
    assert [(r["contender"], r["width"], r["seq_len"]) for r in rows] == [
        ("attention", 8, 9), ("attention", 16, 9), ("hyena", 8, 9), ("hyena", 16, 9)
    ]  # fmt: skip
    assert "hyena n=9" in zoology.table(rows)
