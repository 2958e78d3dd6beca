"""Chapter 1's trained comparison: the fixed FFT against learned Monarch factors.

    python -m benchmarks.monarch                # the committed grid (~7 CPU-min)
    python -m benchmarks.monarch --steps 3      # a toy grid for the tests

Every cell trains one byte-level ``minimodels.lm.LM`` (width 64, depth 2, MLP
4x) whose sequence mixer is a gated long convolution, ``GatedLongConv``: a
projection to a signal u and a gate g, a short causal convolution of u
(``ShortConv``, 3 taps), a long convolution of it with a free filter h (one
per channel, as long as the sequence), the gate, an output projection. The
*contender* says how the long convolution runs:

- ``fft``: ``conv.fft_conv`` (the FFT, fixed);
- ``monarch``: ``conv.MonarchConv`` (the filter's transform a learned
  two-factor Monarch matrix, initialised to the DFT; the signal's transforms the
  FFT, so the layer stays causal).

Windows of 128 bytes of ``stdlib_corpus(CORPUS_BYTES)``, 300 steps of 16
windows, AdamW with 20 warm-up steps and cosine decay, at a learning rate
``lr`` and a ``seed`` (init and batch order). The held-out bytes are cut in
two: ``val_bits`` (bits per byte over 32 non-overlapping windows, 4,096 bytes)
picks each contender's learning rate, ``test_bits`` (32 other windows) scores
it. ``transform_change`` is the learned factors' relative distance from the
DFT's after training (root mean square over layers; 0 for ``fft``). Rows and
provenance go to ``figures/data/monarch.json``.
"""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Sequence
from functools import cache, partial
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from benchmarks.hierarchical_lm import cells, windows
from minimodels import bench, conv, experiments
from minimodels._util import check, check_positive
from minimodels.data import random_windows, stdlib_corpus
from minimodels.lm import LM, count_parameters
from minimodels.train import TrainConfig, evaluate, train

CORPUS_BYTES = 400_000
CONTENDERS = ("fft", "monarch")
WIDTH, DEPTH, N, STEPS, BATCH, WINDOWS = 64, 2, 128, 300, 16, 32
CELL_NAMES = ("contender", "seed", "lr", "steps")


class GatedLongConv(nn.Module):
    """(b n c) -> (b n c): out(g * (conv(short(u), h) + D short(u))), [u, g] = in(x).

    ``learned=True`` runs the long convolution through ``conv.MonarchConv``.
    The filter starts as noise under an exponential decay (rate 1 / 16 per
    position), so early taps dominate, as in the long-convolution papers.
    """

    def __init__(self, dim: int, *, seq_len: int, learned: bool = False) -> None:
        super().__init__()
        check_positive(dim=dim, seq_len=seq_len)
        self.seq_len = seq_len
        self.to_ug = nn.Linear(dim, 2 * dim)
        self.short = conv.ShortConv(dim)
        decay = torch.exp(-torch.arange(seq_len) / 16)
        self.h = nn.Parameter(torch.randn(dim, seq_len) * decay / 4)
        self.D = nn.Parameter(torch.randn(dim))
        self.monarch = conv.MonarchConv(seq_len) if learned else None
        self.to_out = nn.Linear(dim, dim)

    def long_conv(self, u: Tensor) -> Tensor:  # u: (b c n)
        h = self.h[:, : u.shape[-1]]
        if self.monarch is None:
            return conv.fft_conv(u, h, self.D)
        check(u.shape[-1] == self.seq_len, f"sequences must be {self.seq_len} long")
        return self.monarch(u, h, self.D)

    def forward(self, x: Tensor) -> Tensor:  # x: (b n c)
        u, g = rearrange(self.to_ug(x), "b n c -> b c n").chunk(2, dim=1)
        y = self.long_conv(self.short(u)) * F.silu(g)
        return self.to_out(rearrange(y, "b c n -> b n c"))


def build(name: str, seed: int) -> LM:
    """One contender, initialised from ``seed``."""
    check(name in CONTENDERS, f"unknown contender {name!r}; known: {CONTENDERS}")
    torch.manual_seed(seed)
    mixer = partial(GatedLongConv, seq_len=N, learned=name == "monarch")
    return LM(256, WIDTH, DEPTH, mixer)


@cache
def corpus():
    return stdlib_corpus(CORPUS_BYTES)


def held_out() -> dict[str, tuple[Tensor, Tensor]]:
    val = corpus().val
    half = len(val) // 2
    return {
        "val": windows(val[:half], N, WINDOWS),
        "test": windows(val[half:], N, WINDOWS),
    }


def transform_change(model: nn.Module) -> float:
    """Root mean square of ``MonarchConv.distance_from_dft`` over ``model``'s
    layers (0 without one): the layers have equal sizes, so this is the
    distance of all their factors together."""
    layers = [m for m in model.modules() if isinstance(m, conv.MonarchConv)]
    squares = [layer.distance_from_dft() ** 2 for layer in layers]
    return math.sqrt(sum(squares) / len(squares)) if squares else 0.0


def _draw(batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    return random_windows(corpus().train, batch_size, N, g)


def score(
    model: nn.Module, cell: dict[str, Any], *, batch: int = BATCH
) -> dict[str, float]:
    """Train ``model`` at the cell's lr, seed and steps, ``batch`` windows a
    step; bits per byte held out.

    Shared by this grid and ``benchmarks.h3_hybrid``.
    """
    split, steps = held_out(), cell["steps"]
    config = TrainConfig(
        steps=steps, batch_size=batch, lr=cell["lr"], warmup=min(20, steps),
        eval_every=steps, seed=cell["seed"], progress=False,
    )  # fmt: skip
    val_bits = train(model, _draw, split["val"], config).final_bits
    test_nats = evaluate(model, split["test"], batch_size=16, batches=None)[0]
    return {
        "val_bits": val_bits, "test_bits": test_nats / math.log(2),
        "test_bytes": split["test"][1].numel(), "parameters": count_parameters(model),
    }  # fmt: skip


def run_cell(cell: dict[str, Any]) -> dict[str, float]:
    """Train one (contender, seed, lr) cell; bits per byte on val and test."""
    model = build(cell["contender"], cell["seed"])
    return {**score(model, cell), "transform_change": transform_change(model)}


def grid(
    name: str, contenders: Sequence[str], lrs: Sequence[float], steps: int = STEPS
) -> bench.Benchmark:
    """The command line of this grid and of ``benchmarks.h3_hybrid``: every
    (contender, lr, seed) cell of ``benchmarks.<name>.run_cell``, into
    ``figures/data/<name>.json``; ``--toy`` is one cell of one step."""
    module = importlib.import_module(f"benchmarks.{name}")  # also from __main__

    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--contenders", nargs="+", default=list(contenders))
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--lrs", type=float, nargs="+", default=list(lrs))
        p.add_argument("--steps", type=int, default=steps)

    def run(args: argparse.Namespace) -> list[dict[str, Any]]:
        cells_ = cells(args.contenders, args.seeds, args.lrs, steps=args.steps)
        return experiments.run_grid(
            module.run_cell, cells_, description=name, **bench.grid_options(args)
        )

    toy = ["--contenders", contenders[-1], "--seeds", "0", "--lrs", "1e-3",
           "--steps", "1"]  # fmt: skip
    return bench.Benchmark(
        name=name, doc=module.__doc__, run=run, out=f"{name}.json",
        add_arguments=add_arguments, toy=toy, grid=True, device=None,
    )  # fmt: skip


BENCHMARK = grid("monarch", CONTENDERS, [1e-3, 3e-3, 1e-2, 3e-2])


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    return BENCHMARK.main(argv)


if __name__ == "__main__":
    main()
