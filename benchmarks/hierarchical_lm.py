"""Chapter 8's trained results over seeds and learning rates, on stdlib bytes.

Two experiments, one grid (cells: contender, seed, lr):

- the leak: ``Hourglass(256, 64, factor=4, depth=(1, 1, 1))`` with and without
  the shift by k - 1, 40 steps of 8 windows of 128 bytes;
- equal parameters: a flat Transformer (``HierarchicalTransformer`` with
  hierarchies 1, width 96) against (1, 2) and (1, 2, 8) models whose narrow
  byte stream (width 48, window 64) is helped by compressed streams (stride =
  factor) whose width makes the parameter count match within 3%; 60 steps of 4
  windows of 512 bytes.

The corpus is ``stdlib_corpus(1_000_000)``; its held-out bytes are cut in two:
validation windows choose each contender's learning rate, test windows (disjoint)
score it, bits per byte over every byte of 32 non-overlapping windows each.

    python -m benchmarks.hierarchical_lm       # -> figures/data/hierarchical_lm.json
    python -m benchmarks.hierarchical_lm --toy # seconds, into _build/toy/
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn

from minimodels import bench
from minimodels.data import random_windows, stdlib_corpus
from minimodels.hierarchical import HierarchicalTransformer
from minimodels.hourglass import Hourglass
from minimodels.lm import count_parameters
from minimodels.train import TrainConfig, evaluate, train

CORPUS_BYTES = 1_000_000
LEAK = ("hourglass naive", "hourglass shifted")
EQUAL = ("1 level", "(1, 2)", "(1, 2, 8)")
N, DEPTH, WINDOWS = 512, 3, 32


@cache
def corpus():
    return stdlib_corpus(CORPUS_BYTES)


def windows(data: Tensor, seq_len: int, count: int) -> tuple[Tensor, Tensor]:
    """``count`` non-overlapping (input, next byte) windows from the start."""
    count = min(count, (len(data) - 1) // seq_len)
    chunk = data[: count * seq_len + 1]
    return chunk[:-1].view(count, seq_len), chunk[1:].view(count, seq_len)


def held_out(seq_len: int, count: int = WINDOWS) -> dict[str, tuple[Tensor, Tensor]]:
    val = corpus().val
    half = len(val) // 2
    return {
        "val": windows(val[:half], seq_len, count),
        "test": windows(val[half:], seq_len, count),
    }


def hierarchical(dim: Any, heads: Any = 4, **config: Any) -> HierarchicalTransformer:
    return HierarchicalTransformer(
        num_tokens=256, dim=dim, depth=DEPTH, seq_len=N, heads=heads, dim_head=24,
        **config,
    )  # fmt: skip


# per contender: (compressed width -> the widths of the streams, the rest)
Shape = tuple[Callable[[int], tuple[int, ...]], dict[str, Any]]
SHAPES: dict[str, Shape] = {
    "(1, 2)": (lambda d: (48, d), dict(heads=(2, 4), hierarchies=(1, 2),
               hierarchical_stride=(1, 2), window_sizes=(64, None))),
    "(1, 2, 8)": (lambda d: (48, d, d), dict(heads=(2, 4, 4), hierarchies=(1, 2, 8),
                  hierarchical_stride=(1, 2, 8), window_sizes=(64, None, None))),
}  # fmt: skip


@cache
def compressed_width(name: str) -> int:
    """The compressed streams' width d that brings ``name`` closest to the flat
    model's parameter count."""
    target = count_parameters(hierarchical(96, hierarchies=1))
    dims, config = SHAPES[name]
    return min(
        range(4, 200, 4),
        key=lambda d: abs(count_parameters(hierarchical(dims(d), **config)) - target),
    )


def build(name: str, seed: int) -> nn.Module:
    """One contender, initialised from ``seed``."""
    torch.manual_seed(seed)
    if name in LEAK:
        return Hourglass(256, 64, factor=4, depth=(1, 1, 1), shift=name == LEAK[1])
    if name == "1 level":
        return hierarchical(96, hierarchies=1)
    dims, config = SHAPES[name]
    return hierarchical(dims(compressed_width(name)), **config)


def run_cell(cell: dict[str, Any]) -> dict[str, float]:
    """Train one (contender, seed, lr) cell; bits per byte on val and test."""
    name, seed = cell["contender"], cell["seed"]
    seq_len, steps, batch = (128, 40, 8) if name in LEAK else (N, 60, 4)
    steps = cell.get("steps", steps)  # a toy run gives fewer
    data, split = corpus(), held_out(seq_len)
    model = build(name, seed)

    def batches(batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        return random_windows(data.train, batch_size, seq_len, g)

    config = TrainConfig(
        steps=steps, batch_size=batch, lr=cell["lr"], warmup=5 if name in LEAK else 10,
        eval_every=steps, seed=seed, progress=False,
    )  # fmt: skip
    history = train(model, batches, split["val"], config)
    test_loss, _ = evaluate(model, split["test"], batch_size=8, batches=None)
    return {
        "val_bits": history.final_bits,
        "test_bits": test_loss / math.log(2),
        "parameters": count_parameters(model),
    }


def cells(
    contenders: Sequence[str],
    seeds: Sequence[int],
    lrs: Sequence[float],
    **fixed: Any,
) -> list[dict[str, Any]]:
    return [
        {"contender": c, "seed": s, "lr": lr, **fixed} for c in contenders
        for lr in lrs for s in seeds
    ]  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--contenders", nargs="+", default=[*LEAK, *EQUAL])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-2])
    p.add_argument("--steps", type=int, default=None, help="toy runs only")


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    fixed = {} if args.steps is None else {"steps": args.steps}
    return cells(args.contenders, args.seeds, args.lrs, **fixed)


BENCHMARK = bench.Benchmark(
    "hierarchical_lm", __doc__, grid, "hierarchical_lm.json", add_arguments,
    ["--contenders", "hourglass shifted", "--seeds", "0", "--lrs", "3e-3",
     "--steps", "1"], cell=run_cell, device=None,
)  # fmt: skip
main = BENCHMARK.main

if __name__ == "__main__":
    main()
