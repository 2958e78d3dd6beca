"""S4D against attention on the sign of a slow moving average (chapter 2).

The task is ``minimodels.data.moving_average_sign`` (random bits, at every
position the sign of their exponential moving average with tau = 256), at
length 4096. Each contender is a one-block ``LM`` of width 32 (about 8,200
parameters either way): S4D (``d_state=16``) or causal softmax attention (2
heads, rotary). Both train for the same 80 steps of 2 fresh sequences with the
book's trainer, over four learning rates (1e-3 to 3e-2) and three seeds. The
learning rate is chosen on a validation set (32 sequences, seed 12345); the
test set (128 sequences, seed 54321, 524,288 scored positions) only scores.

    python -m benchmarks.ssm_longrange   # -> figures/data/ssm_longrange_cpu.json

``--toy`` runs a tiny grid (length 64, 3 steps, 2 seeds, 2 learning rates) for
the tests. Every cell is
one thread; the file records provenance and resumes (``minimodels.experiments``).
For S4D, the learning rate of the grid is that of every parameter but A, B and
Δ, which train at 1e-3 with no weight decay (the S4D code's convention,
``S4D(lr=1e-3)``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from minimodels import bench, data, experiments
from minimodels.lm import LM, count_parameters, mixer_factory
from minimodels.train import TrainConfig, evaluate, train

CONTENDERS = ("s4d", "attention")
LRS = (1e-3, 3e-3, 1e-2, 3e-2)
RUN_ORDER = (1e-2, 3e-3, 3e-2, 1e-3)  # the middle rates first
SEEDS = (0, 1, 2)
VAL_SEED, TEST_SEED = 12345, 54321
FULL = dict(seq_len=4096, steps=80, val_sequences=32, test_sequences=128)
TOY = dict(seq_len=64, steps=3, val_sequences=2, test_sequences=2)
CELL_NAMES = ("contender", "seed", "lr", *FULL)


def make_model(contender: str, init: str = "inv") -> LM:
    """The chapter's one-block models, width 32, MLP 2x, vocabulary 2; ``init``
    is S4D's (``ssm.INITS``; ``benchmarks.ssm_init`` compares them)."""
    mixers = {
        "s4d": mixer_factory("s4d", d_state=16, init=init),
        "attention": mixer_factory("attention", heads=2),
    }
    return LM(2, 32, 1, mixers[contender], mlp_mult=2)


class FreshSequences:
    """Training data: fresh sequences at every step, seeded by the trainer."""

    def __init__(self, seq_len: int) -> None:
        self.seq_len = seq_len

    def __call__(self, batch: int, generator: torch.Generator):
        seed = int(torch.randint(0, 2**31, (1,), generator=generator))
        return data.moving_average_sign(batch, self.seq_len, seed=seed)


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Train one contender at one learning rate and seed; score val and test."""
    n = cell["seq_len"]
    val = data.moving_average_sign(cell["val_sequences"], n, seed=VAL_SEED)
    test = data.moving_average_sign(cell["test_sequences"], n, seed=TEST_SEED)
    config = TrainConfig(
        steps=cell["steps"], batch_size=2, lr=cell["lr"], warmup=10,
        eval_every=cell["steps"], seed=cell["seed"], progress=False,
    )  # fmt: skip
    torch.manual_seed(cell["seed"])
    model = make_model(cell["contender"], cell.get("init", "inv"))
    start = time.process_time()
    history = train(model, FreshSequences(n), val, config)
    test_loss, test_acc = evaluate(model, test, batch_size=4, batches=None)
    return {
        "val_acc": history.final_acc,
        "val_loss": history.final_loss,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "parameters": count_parameters(model),
        "cpu_seconds": time.process_time() - start,
    }


def cells(
    size: dict[str, int] = FULL, *, seeds: tuple = SEEDS, lrs: tuple = LRS
) -> list[dict[str, Any]]:
    """Every (contender, seed, lr), learning rate by learning rate in the order
    of ``RUN_ORDER`` (so a grid cut short holds whole rates, both contenders and
    every seed, rather than one contender)."""
    ordered = sorted(lrs, key=lambda lr: RUN_ORDER.index(lr) if lr in RUN_ORDER else 99)
    return [
        {"contender": c, "seed": s, "lr": lr, **size}
        for lr in ordered
        for c in CONTENDERS
        for s in seeds
    ]


def report(rows: list[dict[str, Any]]) -> str:
    """The validation grid and the tuned test accuracies."""
    lines = []
    for c in CONTENDERS:
        for lr in sorted({r["lr"] for r in rows}):
            accs = [r["val_acc"] for r in rows if r["contender"] == c and r["lr"] == lr]
            lines.append(
                f"{c:10s} lr {lr:g}: val " + " ".join(f"{a:.3f}" for a in accs)
            )
    tuned = experiments.tune(rows, select="val_acc", by=("contender",))
    summary = experiments.summarize(tuned, "test_acc", by=("contender", "lr"))
    return "\n".join(lines + experiments.summary_lines(summary, ("contender",)))


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    return cells(TOY, seeds=(0, 1), lrs=(1e-3, 1e-2)) if args.toy else cells()


BENCHMARK = bench.Benchmark(
    "ssm_longrange", __doc__, grid, "ssm_longrange_{tag}.json", cell=run_cell,
    report=report, device=None,
)  # fmt: skip
main = BENCHMARK.main

if __name__ == "__main__":
    main()
