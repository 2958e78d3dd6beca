"""Data that needs no network: synthetic tasks made in code, and text on disk.

Synthetic tasks (each returns ``(x, y)`` long tensors of shape (N, L); ``y`` is -100
wherever there is nothing to predict, so the loss and accuracy count only answers):

- associative recall, as in H3 (Fu et al., 2023, arXiv:2212.14052) and Hyena
  (Poli et al., 2023, arXiv:2302.10866): key-value pairs, then a key; say its value;
- induction heads (Olsson et al., 2022): after a trigger token, copy the token that
  followed the trigger's first occurrence;
- selective copying (Gu & Dao, 2023, arXiv:2312.00752): copy the data tokens
  scattered among noise, in order, after the markers;
- remember the first token (chapter 2): one signal, blanks, and a query at the end;
- the sign of a slow moving average (chapter 2): at every position, whether the
  exponential moving average of random signs is positive, a task whose answer is
  itself the output of a one-mode state space model.

Text: ``stdlib_corpus`` reads Python's own standard-library sources (a byte-level
corpus with a train/val split); ``load_enwik8`` reads the Hutter Prize file with the
standard 90M/5M/5M split.

Shapes: N examples, L sequence length.
"""

from __future__ import annotations

import math
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from minimodels._util import check, check_positive
from minimodels.conv import fft_conv

__all__ = [
    "IGNORE",
    "associative_recall",
    "induction_heads",
    "selective_copying",
    "remember_first",
    "moving_average_sign",
    "distant_recall",
    "ByteCorpus",
    "stdlib_corpus",
    "load_enwik8",
    "random_windows",
]

IGNORE = -100  # target value that the loss and the accuracy skip
Pair = tuple[Tensor, Tensor]  # a task's (x, y), each (N L)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_sizes(
    num_examples: int, seq_len: int, vocab_size: int, min_len: int, min_vocab: int
) -> None:
    check_positive(num_examples=num_examples)
    check(seq_len >= min_len, f"seq_len must be >= {min_len}, got {seq_len}")
    check(
        vocab_size >= min_vocab, f"vocab_size must be >= {min_vocab}, got {vocab_size}"
    )


def associative_recall(
    num_examples: int,
    seq_len: int,
    vocab_size: int,
    *,
    multi_query: bool = False,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Key-value pairs ``k1 v1 k2 v2 ... k`` then a query key; predict its value.

    The vocabulary is split in half: keys are tokens [0, V/2), values [V/2, V).
    Each example draws its own key -> value map (a key keeps its value wherever it
    repeats), fills ``seq_len - 1`` positions with pairs, and ends with a key seen
    earlier; the only target is that key's value, at the last position.
    ``seq_len`` must be odd (pairs plus the query).

    ``multi_query=True`` also asks for the value at every repeated key (the target
    at key position 2i is v_i when k_i appeared before), the multi-query form of
    Zoology (Arora et al., 2023, arXiv:2312.04927): the same skill, with more
    answers per sequence to learn from.
    """
    check_positive(num_examples=num_examples)
    check(seq_len >= 3 and seq_len % 2 == 1, f"seq_len must be odd >= 3, got {seq_len}")
    check(vocab_size >= 4 and vocab_size % 2 == 0, "vocab_size must be even >= 4")
    g, n_keys, n_pairs = _generator(seed), vocab_size // 2, (seq_len - 1) // 2
    values = torch.randint(n_keys, vocab_size, (num_examples, n_keys), generator=g)
    keys = torch.randint(0, n_keys, (num_examples, n_pairs), generator=g)
    pairs = torch.stack((keys, values.gather(1, keys)), dim=-1).flatten(1)
    pick = torch.randint(0, n_pairs, (num_examples, 1), generator=g)
    query = keys.gather(1, pick)
    x = torch.cat((pairs, query), dim=1)
    y = torch.full_like(x, IGNORE)
    y[:, -1] = values.gather(1, query)[:, 0]
    if multi_query:
        # a key was seen before pair i when its first occurrence is earlier: one
        # scatter over (N, keys) instead of an (N, L/2, L/2) comparison
        position = torch.arange(n_pairs).expand(num_examples, n_pairs)
        first = torch.full((num_examples, n_keys), n_pairs).scatter_reduce(
            1, keys, position, "amin"
        )
        seen_before = first.gather(1, keys) < position
        answers = torch.where(seen_before, pairs[:, 1::2], IGNORE)
        y[:, 0:-1:2] = answers
    return x, y


def induction_heads(
    num_examples: int, seq_len: int, vocab_size: int, *, seed: int = 0
) -> Pair:
    """Random tokens with a trigger (token ``vocab_size - 1``) placed once in the
    first half and again at the last position; predict the token that followed
    the first trigger."""
    _check_sizes(num_examples, seq_len, vocab_size, min_len=4, min_vocab=3)
    g, trigger = _generator(seed), vocab_size - 1
    x = torch.randint(0, trigger, (num_examples, seq_len), generator=g)
    where = torch.randint(0, (seq_len - 2) // 2, (num_examples,), generator=g)
    rows = torch.arange(num_examples)
    x[rows, where] = trigger
    x[:, -1] = trigger
    y = torch.full_like(x, IGNORE)
    y[:, -1] = x[rows, where + 1]
    return x, y


def selective_copying(
    num_examples: int, seq_len: int, vocab_size: int, *, num_tokens: int = 4,
    seed: int = 0,
) -> Pair:  # fmt: skip
    """``num_tokens`` data tokens scattered among noise (token 0) in the first
    ``seq_len - num_tokens`` positions, then ``num_tokens`` markers (token
    ``vocab_size - 1``); at each marker, predict the next data token in order."""
    check_positive(num_tokens=num_tokens)
    _check_sizes(num_examples, seq_len, vocab_size, min_len=1, min_vocab=3)
    body = seq_len - num_tokens
    check(body >= num_tokens, f"seq_len ({seq_len}) must be >= 2 * num_tokens")
    g, marker = _generator(seed), vocab_size - 1
    data = torch.randint(1, marker, (num_examples, num_tokens), generator=g)
    slots = torch.rand(num_examples, body, generator=g).argsort(-1)[:, :num_tokens]
    slots = slots.sort(-1).values
    x = torch.zeros(num_examples, seq_len, dtype=torch.long)
    x.scatter_(1, slots, data)
    x[:, body:] = marker
    y = torch.full_like(x, IGNORE)
    y[:, body:] = data  # at each marker, having read it, say the next data token
    return x, y


def remember_first(
    num_examples: int, seq_len: int, vocab_size: int, *, seed: int = 0
) -> Pair:
    """A long-range memory task: ``signal blank ... blank query``; at the query
    (the last position) predict the signal, the first token.

    Tokens: blank 0, signals 1 .. V-2, query V-1. Targets are -100 except at the
    last position.
    """
    _check_sizes(num_examples, seq_len, vocab_size, min_len=2, min_vocab=3)
    g = _generator(seed)
    x = torch.zeros(num_examples, seq_len, dtype=torch.long)
    x[:, 0] = torch.randint(1, vocab_size - 1, (num_examples,), generator=g)
    x[:, -1] = vocab_size - 1
    y = torch.full_like(x, IGNORE)
    y[:, -1] = x[:, 0]
    return x, y


def moving_average_sign(
    num_examples: int, seq_len: int, *, tau: float = 256.0, seed: int = 0
) -> Pair:
    """A long-range task whose answer is itself an SSM: random bits b_k, and at
    every position k the target says whether the exponential moving average of the
    signs s_k = 2 b_k - 1 with time constant ``tau`` is positive (1) or not (0):

        y_k = [ sum_j K̄_j s_{k-j} > 0 ],  K̄_j = (1 - e^{-1/tau}) e^{-j/tau},

    the kernel of one real mode (A = -1, B = 1, C = 1) with ZOH step Δ = 1/tau
    (``minimodels.ssm.ssm_kernel`` gives the same K̄: tested). Tokens and answers
    are 0 and 1 (a vocabulary of 2); every position is scored.
    """
    check_positive(num_examples=num_examples, seq_len=seq_len, tau=tau)
    g = _generator(seed)
    x = torch.randint(0, 2, (num_examples, seq_len), generator=g)
    lags = torch.arange(seq_len, dtype=torch.float64)
    K = -math.expm1(-1 / tau) * torch.exp(-lags / tau)  # (L,)
    ema = fft_conv((2 * x - 1).double()[:, None], K)[:, 0]
    return x, (ema > 0).long()


@dataclass(frozen=True)
class ByteCorpus:
    """A byte-level text corpus: 256 tokens, so the loss in bits is bits-per-byte."""

    train: Tensor  # (n_train,) long
    val: Tensor  # (n_val,) long
    vocab_size: int = 256

    @staticmethod
    def encode(text: str) -> Tensor:
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)

    @staticmethod
    def decode(ids: Tensor) -> str:
        return bytes(ids.tolist()).decode("utf-8", errors="replace")


def _split(data: bytes, val_fraction: float) -> ByteCorpus:
    check(0 < val_fraction < 1, f"val_fraction must be in (0, 1), got {val_fraction}")
    ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    n_val = max(1, int(len(ids) * val_fraction))
    return ByteCorpus(train=ids[:-n_val], val=ids[-n_val:])


def stdlib_corpus(
    num_bytes: int = 2_000_000, *, val_fraction: float = 0.1, root: Path | None = None
) -> ByteCorpus:
    """The first ``num_bytes`` of this Python's standard-library ``.py`` files (in
    sorted path order, tests skipped), as a byte corpus with a train/val split."""
    check_positive(num_bytes=num_bytes)
    root = Path(root or sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if "test" in path.relative_to(root).parts[0] or "site-packages" in path.parts:
            continue
        chunk = path.read_bytes()
        chunks.append(chunk)
        total += len(chunk)
        if total >= num_bytes:
            break
    data = b"".join(chunks)[:num_bytes]
    check(len(data) > 100, f"found too little source under {root}")
    return _split(data, val_fraction)


def load_enwik8(
    path: str | Path,
    *,
    split: tuple[int, int, int] = (90_000_000, 5_000_000, 5_000_000),
) -> tuple[Tensor, Tensor, Tensor]:
    """Read enwik8 (the raw file or ``enwik8.zip``) and cut the standard split:
    the first 90M bytes train, the next 5M validation, the last 5M test."""
    path = Path(path)
    check(path.is_file(), f"path {path} is not a file")
    data = path.read_bytes()
    if data[:4] == b"PK\x03\x04" or zipfile.is_zipfile(path):
        data = _unzip_one(path)
    check(
        len(data) >= sum(split),
        f"{path} holds {len(data)} bytes, fewer than the split {split} needs",
    )
    ids = torch.frombuffer(bytearray(data[: sum(split)]), dtype=torch.uint8).long()
    n_train, n_val, _ = split
    return ids[:n_train], ids[n_train : n_train + n_val], ids[n_train + n_val :]


def _unzip_one(path: Path) -> bytes:
    """The one file inside a zip, with a clear error for a broken archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            check(len(names) == 1, f"{path} must hold one file, holds {len(names)}")
            return archive.read(names[0])
    except (zipfile.BadZipFile, EOFError) as error:
        message = f"{path} is not a readable zip (truncated?): {error}"
        raise ValueError(message) from None


def random_windows(
    data: Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """A batch of random windows of a 1-D token stream: inputs and next tokens."""
    check_positive(batch_size=batch_size, seq_len=seq_len)
    check(
        len(data) >= seq_len + 1,
        f"data ({len(data)} tokens) must hold at least seq_len + 1 = {seq_len + 1}",
    )
    # the last start, len - seq_len - 1, is allowed: its window ends on the
    # stream's final token, which is then a target like any other
    start = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator)
    idx = start[:, None] + torch.arange(seq_len + 1)
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]


def distant_recall(
    num_examples: int, *, block_width: int, gap_blocks: int, num_pairs: int = 4,
    num_keys: int = 16, num_values: int = 16, seed: int = 0,
) -> Pair:  # fmt: skip
    """Key-value recall whose answers lie ``gap_blocks`` blocks back (chapter 7,
    block recurrence).

    Block 0 holds ``num_pairs`` pairs ``k v`` (distinct keys) then noise; then come
    ``gap_blocks`` blocks of noise; the last block is noise then every key once,
    in a new order, each to be answered with its value (its target; -100
    elsewhere). Tokens: keys [0, K), values [K, K+V), noise K+V.
    Returns (x, y) of shape (N, (gap_blocks + 2) * block_width).
    """
    check_positive(num_examples=num_examples, num_pairs=num_pairs)
    check(gap_blocks >= 0, f"gap_blocks must be >= 0, got {gap_blocks}")
    check(2 * num_pairs <= block_width, "2 * num_pairs must be <= block_width")
    check(num_pairs <= num_keys, f"num_pairs must be <= num_keys ({num_keys})")
    g = _generator(seed)
    n, w, noise = num_examples, block_width, num_keys + num_values
    keys = torch.rand(n, num_keys, generator=g).argsort(-1)[:, :num_pairs]
    values = torch.randint(num_keys, noise, (n, num_pairs), generator=g)
    x = torch.full((n, (gap_blocks + 2) * w), noise, dtype=torch.long)
    x[:, : 2 * num_pairs] = torch.stack((keys, values), -1).flatten(1)
    order = torch.rand(n, num_pairs, generator=g).argsort(-1)
    x[:, -num_pairs:] = keys.gather(1, order)
    y = torch.full_like(x, IGNORE)
    y[:, -num_pairs:] = values.gather(1, order)
    return x, y
