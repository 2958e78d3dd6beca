"""Chapter 6's byte language model with dilated attention, over seeds and lrs.

A 2-layer ``LM`` (width 64) whose mixer is ``DilatedAttention`` with 4 heads and
branches (16, 1), (64, 4), (256, 16) over windows of 256 bytes of Python's
standard library (``stdlib_corpus(400_000)``), trained for 120 steps of 8
windows. The held-out bytes are cut in two: the first half gives the validation
windows that choose the learning rate, the second half the test windows that
score it (non-overlapping, every window scored). Each cell is one (seed, lr).

    python -m benchmarks.dilated_lm          # -> figures/data/dilated_lm.json
    python -m benchmarks.dilated_lm --toy    # seconds, into _build/toy/
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import cache
from typing import Any

import torch
from torch import Tensor

from minimodels import bench
from minimodels.data import random_windows, stdlib_corpus
from minimodels.lm import LM, mixer_factory
from minimodels.train import TrainConfig, evaluate, train

SEQ_LEN = 256
BRANCHES = {"segment_lengths": (16, 64, 256), "dilation_rates": (1, 4, 16)}


@cache
def corpus(num_bytes: int = 400_000):
    return stdlib_corpus(num_bytes)


def windows(data: Tensor, seq_len: int = SEQ_LEN) -> tuple[Tensor, Tensor]:
    """Non-overlapping (input, next byte) windows covering ``data``."""
    count = (len(data) - 1) // seq_len
    chunk = data[: count * seq_len + 1]
    x = chunk[:-1].view(count, seq_len)
    y = chunk[1:].view(count, seq_len)
    return x, y


def held_out(num_bytes: int = 400_000) -> dict[str, tuple[Tensor, Tensor]]:
    """The validation and test windows: two disjoint halves of the held-out bytes."""
    val = corpus(num_bytes).val
    half = len(val) // 2
    return {"val": windows(val[:half]), "test": windows(val[half:])}


def unigram_bits(num_bytes: int = 400_000) -> float:
    """Entropy of the training bytes' frequencies: the best context-free model."""
    train_bytes = corpus(num_bytes).train
    freq = torch.bincount(train_bytes, minlength=256).double() / len(train_bytes)
    freq = freq[freq > 0]
    return float(-(freq * freq.log2()).sum())


def model(seed: int, dim: int = 64, depth: int = 2, heads: int = 4) -> LM:
    torch.manual_seed(seed)
    return LM(256, dim, depth, mixer_factory("dilated", heads=heads, **BRANCHES))


def run_cell(cell: dict[str, Any]) -> dict[str, float]:
    """Train one (seed, lr) cell; bits per byte on validation and test windows."""
    data = corpus(cell.get("corpus_bytes", 400_000))
    split = held_out(cell.get("corpus_bytes", 400_000))
    lm = model(cell["seed"], cell.get("dim", 64))

    def batches(batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        return random_windows(data.train, batch_size, SEQ_LEN, g)

    steps = cell.get("steps", 120)
    config = TrainConfig(
        steps=steps, batch_size=8, lr=cell["lr"], eval_every=steps,
        seed=cell["seed"], progress=False,
    )  # fmt: skip
    history = train(lm, batches, split["val"], config)
    test_loss, _ = evaluate(lm, split["test"], batch_size=16, batches=None)
    return {
        "val_bits": history.final_bits,
        "test_bits": test_loss / torch.log(torch.tensor(2.0)).item(),
    }


def cells(seeds: Sequence[int], lrs: Sequence[float], **fixed: Any) -> list[dict]:
    return [{"seed": s, "lr": lr, **fixed} for lr in lrs for s in seeds]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-2])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--dim", type=int, default=64)


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    return cells(args.seeds, args.lrs, steps=args.steps, dim=args.dim)


TOY = ["--seeds", "0", "--lrs", "3e-3", "--steps", "2", "--dim", "16"]
BENCHMARK = bench.Benchmark(
    "dilated_lm", __doc__, grid, "dilated_lm.json", add_arguments, TOY,
    cell=run_cell, device=None,
)  # fmt: skip
main = BENCHMARK.main

if __name__ == "__main__":
    main()
