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

    neighbours = [
        d
        for d in (dim - 8, dim - 4, dim + 4, dim + 8)
        if d >= 4 and (name != "h3" or d % 8 == 0)
    ]
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


def test_benchmark_runs_at_toy_size(tmp_path):
    from benchmarks import bakeoff as benchmark

    out = tmp_path / "bakeoff.json"
    benchmark.main(
        ["--contenders", "attention", "hyena", "--params", "6000", "--steps", "2",
         "--batch-size", "4", "--recall", "7", "--induction", "--bytes", "16",
         "--corpus-bytes", "20000", "--examples", "16", "--speed", "16", "32",
         "--speed-dim", "8", "--repeats", "1", "--out", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["environment"]["torch"]
    tasks = [(r["contender"], r["task"]) for r in saved["results"]["quality"]]
    assert tasks == [("attention", "recall n=7"), ("hyena", "recall n=7"),
                     ("attention", "bytes n=16"), ("hyena", "bytes n=16")]  # fmt: skip
    speed = saved["results"]["speed"]
    assert [(r["contender"], r["n"]) for r in speed] == [
        ("attention", 16), ("attention", 32), ("hyena", 16), ("hyena", 32)
    ]  # fmt: skip
