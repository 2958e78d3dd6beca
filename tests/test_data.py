import math
import zipfile

import pytest
import torch

from minimodels.data import (
    IGNORE,
    ByteCorpus,
    associative_recall,
    induction_heads,
    load_enwik8,
    moving_average_sign,
    random_windows,
    remember_first,
    selective_copying,
    stdlib_corpus,
)


def test_associative_recall_answers_are_the_bound_values():
    x, y = associative_recall(200, 21, 16, seed=3)
    assert x.shape == y.shape == (200, 21)
    assert (y[:, :-1] == IGNORE).all()
    keys, values = x[:, 0:-1:2], x[:, 1:-1:2]
    assert (keys < 8).all() and (values >= 8).all() and (x[:, -1] < 8).all()
    for row in range(200):
        bound = {}
        for k, v in zip(keys[row].tolist(), values[row].tolist()):
            assert bound.setdefault(k, v) == v  # a key keeps its value
        assert y[row, -1].item() == bound[x[row, -1].item()]


def test_multi_query_recall_asks_at_every_repeated_key():
    x, y = associative_recall(100, 41, 16, multi_query=True, seed=0)
    single_x, single_y = associative_recall(100, 41, 16, seed=0)
    assert torch.equal(x, single_x) and torch.equal(y[:, -1], single_y[:, -1])
    assert (y[:, 1:-1:2] == IGNORE).all()  # never at a value position
    for row in range(100):
        for i in range(0, 40, 2):
            repeated = x[row, i].item() in x[row, 0:i:2].tolist()
            expected = x[row, i + 1].item() if repeated else IGNORE
            assert y[row, i].item() == expected
    assert (y[:, :-1] != IGNORE).sum() > 100


def test_tasks_are_deterministic_by_seed():
    for task in (associative_recall, induction_heads, selective_copying):
        a, b, c = (
            task(8, 33, 10, seed=1),
            task(8, 33, 10, seed=1),
            task(8, 33, 10, seed=2),
        )
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[0], c[0])


def test_induction_heads_target_follows_first_trigger():
    x, y = induction_heads(100, 30, 12, seed=0)
    trigger = 11
    for row in range(100):
        first = (x[row] == trigger).nonzero()[0].item()
        assert first < 14 and x[row, -1] == trigger
        assert y[row, -1] == x[row, first + 1]
        assert (x[row] == trigger).sum() == 2


def test_selective_copying_targets_are_the_data_in_order():
    x, y = selective_copying(50, 24, 10, num_tokens=4, seed=0)
    for row in range(50):
        body = x[row, :20]
        data = body[body != 0]
        assert torch.equal(y[row][y[row] != IGNORE], data)
        assert (x[row, 20:] == 9).all()


def test_bad_task_arguments():
    with pytest.raises(ValueError, match="seq_len"):
        associative_recall(4, 20, 16)
    with pytest.raises(ValueError, match="vocab_size"):
        associative_recall(4, 21, 15)
    with pytest.raises(ValueError, match="seq_len"):
        selective_copying(4, 6, 10, num_tokens=4)


def test_stdlib_corpus_split_and_roundtrip():
    corpus = stdlib_corpus(50_000, val_fraction=0.2)
    assert len(corpus.train) + len(corpus.val) == 50_000
    assert len(corpus.val) == 10_000
    assert corpus.train.max() < 256 and corpus.vocab_size == 256
    text = ByteCorpus.decode(corpus.train[:200])
    assert torch.equal(ByteCorpus.encode(text), corpus.train[:200])
    assert "import" in ByteCorpus.decode(corpus.train)


def test_stdlib_corpus_reads_a_given_root(tmp_path):
    (tmp_path / "b.py").write_text("print('b')\n" * 20)
    (tmp_path / "a.py").write_text("x = 1\n" * 20)
    corpus = stdlib_corpus(150, root=tmp_path, val_fraction=0.5)
    assert ByteCorpus.decode(corpus.train).startswith("x = 1\n")


@pytest.mark.parametrize("zipped", [False, True])
def test_enwik8_split_on_a_tiny_file(tmp_path, zipped):
    data = bytes(range(256)) * 4
    path = tmp_path / "enwik8"
    path.write_bytes(data)
    if zipped:
        with zipfile.ZipFile(tmp_path / "enwik8.zip", "w") as archive:
            archive.write(path, "enwik8")
        path = tmp_path / "enwik8.zip"
    train, val, test = load_enwik8(path, split=(900, 50, 50))
    assert (len(train), len(val), len(test)) == (900, 50, 50)
    assert train[0] == 0 and val[0] == 900 % 256 and test[-1] == 999 % 256


def test_enwik8_too_small_is_an_error(tmp_path):
    path = tmp_path / "enwik8"
    path.write_bytes(b"abc")
    with pytest.raises(ValueError, match="fewer than the split"):
        load_enwik8(path)


def test_random_windows_are_shifted_by_one():
    data = torch.arange(1000)
    x, y = random_windows(data, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(y, x + 1)


def test_selective_copying_answers_come_after_their_markers():
    x, y = selective_copying(50, 24, 10, num_tokens=4, seed=0)
    answered = y != IGNORE
    # every answer stands at a marker: the model has read it before it must answer
    assert (x[answered] == 9).all()
    assert torch.equal(answered, x == 9)


def test_multi_query_recall_matches_the_quadratic_definition():
    x, y = associative_recall(200, 41, 16, multi_query=True, seed=4)
    keys = x[:, 0:-1:2]
    seen = (keys[:, :, None] == keys[:, None, :]).tril(-1).any(-1)
    expected = torch.where(seen, x[:, 1:-1:2], IGNORE)
    assert torch.equal(y[:, 0:-1:2], expected)


def test_multi_query_recall_at_length_4097_is_cheap():
    # the (N, L/2, L/2) comparison needed about 17 GB here; counted in bytes:
    from minimodels.bench import peak_tensor_bytes

    held = peak_tensor_bytes(
        lambda: associative_recall(64, 4097, 16, multi_query=True, seed=0)
    )
    assert held < 64 * 4097 * 8 * 12  # a dozen (N, L) long tensors at most


def test_random_windows_reach_the_last_token():
    data = torch.arange(20)
    x, y = random_windows(data, 2000, 16, torch.Generator().manual_seed(0))
    assert y.max() == 19  # the stream's final token is a target
    assert set(x[:, 0].tolist()) == set(range(4))  # every start, 0 ... 3
    x, y = random_windows(data[:17], 3, 16, torch.Generator().manual_seed(0))
    assert torch.equal(y[0], data[1:17])  # exactly seq_len + 1 tokens: one window
    with pytest.raises(ValueError, match="seq_len"):
        random_windows(data[:16], 3, 16, torch.Generator())


def test_enwik8_broken_zips_are_clear_errors(tmp_path):
    import zipfile

    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(ValueError, match="holds 0"):
        load_enwik8(empty)
    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w") as archive:
        archive.writestr("enwik8", bytes(range(256)) * 8)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(whole.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated"):
        load_enwik8(truncated, split=(100, 10, 10))
    with pytest.raises(ValueError, match="not a file"):
        load_enwik8(tmp_path)


def test_remember_first_task():
    x, y = remember_first(5, 30, 6, seed=1)
    assert x.shape == y.shape == (5, 30)
    assert ((x[:, 0] >= 1) & (x[:, 0] <= 4)).all()
    assert (x[:, 1:-1] == 0).all() and (x[:, -1] == 5).all()
    assert torch.equal(y[:, -1], x[:, 0]) and (y[:, :-1] == IGNORE).all()
    with pytest.raises(ValueError, match="vocab_size must be >= 3"):
        remember_first(5, 30, 2)
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        remember_first(5, 1, 6)


def test_moving_average_sign_task():
    x, y = moving_average_sign(6, 301, tau=20.0, seed=3)
    assert x.shape == y.shape == (6, 301)
    assert set(x.unique().tolist()) == {0, 1} and set(y.unique().tolist()) == {0, 1}
    # the same moving average, as a plain loop: m_k = e^{-1/tau} m_{k-1} + (1 - ..)s_k
    a = math.exp(-1 / 20.0)
    m, ys = torch.zeros(6, dtype=torch.float64), []
    for s_k in (2 * x - 1).double().unbind(1):
        m = a * m + (1 - a) * s_k
        ys.append((m > 0).long())
    assert torch.equal(torch.stack(ys, 1), y)
    x2, y2 = moving_average_sign(6, 301, tau=20.0, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match="tau"):
        moving_average_sign(4, 11, tau=0.0)
