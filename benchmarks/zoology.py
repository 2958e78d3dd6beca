"""Zoology's central plot at CPU size: recall accuracy against model width.

"Zoology: Measuring and Improving Recall in Efficient Language Models" (Arora
et al., 2023, arXiv:2312.04927), figure 2: on multi-query associative recall,
attention solves the task at every sequence length with a small width, while the
gated convolutions (H3, Hyena) need a width that grows with the length.

Here each cell is ``minimodels.bakeoff.cell`` with the width fixed (``dim``)
instead of the parameter count: a contender at a width, a length and a seed,
with the rest of the bake-off's recipe (``bakeoff.RECIPE``: 400 steps of 32,
warm-up 200) at the learning rate the bake-off tuned for that contender
(``bakeoff.BEST_LR``; Zoology instead takes the best of four rates per cell,
which this CPU budget does not allow). The vocabulary is the bake-off's 16 (8
keys), so a longer sequence has the same keys in more pairs: twice the tokens
to search at 65 as at 33. (A vocabulary of 64 was tried first: with 32 keys a
sequence of 33 tokens repeats about 3 keys, too few questions to learn from, and
no contender, attention at width 64 included, left the counting baseline in
400 steps.)
Rows go to one grid file with provenance (``minimodels.experiments``); an
interrupted run resumes.

    nice -n 10 python -m benchmarks.zoology --processes 2 \\
        --out figures/data/zoology_cpu.json

(3 contenders x 2 widths x 2 lengths x 3 seeds: 36 runs, about 15 CPU-minutes,
H3 at width 64 and 65 tokens the longest at about 1.5 CPU-minutes each. S4D,
which does not recall even at 31 tokens in the bake-off, a third width and a
longer length (129 tokens: H3 at width 64 takes 3 CPU-minutes a run) were cut to
fit the shared machine: ``--contenders ... s4d --widths 16 32 64 --lengths 33
65 129`` adds them to the same file, running only the missing cells.)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from minimodels import bakeoff, bench, experiments

VOCAB = 16


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--contenders", nargs="+", choices=list(bakeoff.CONTENDERS),
                   default=["attention", "h3", "hyena"])  # fmt: skip
    p.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    p.add_argument("--lengths", type=int, nargs="+", default=[33, 65])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=bakeoff.RECIPE["steps"])
    p.add_argument("--vocab-size", type=int, default=VOCAB)


def cells(args: argparse.Namespace) -> list[dict]:
    return [
        {
            "contender": name,
            "task": "recall",
            "seq_len": n,
            "vocab_size": args.vocab_size,
            "dim": dim,
            "steps": args.steps,
            "batch_size": bakeoff.RECIPE["batch_size"],
            "warmup": bakeoff.RECIPE["warmup"],
            "lr": bakeoff.BEST_LR[name],
            "seed": seed,
        }  # fmt: skip
        for n in args.lengths
        for name in args.contenders
        for dim in args.widths
        for seed in args.seeds
    ]


def table(rows: list[dict]) -> str:
    """Test accuracy, min over seeds, per contender x length (rows) x width."""
    widths = sorted({r["dim"] for r in rows})
    lines = [f"{'min over seeds':22s}" + "".join(f"{f'd={d}':>8s}" for d in widths)]
    groups = experiments.summarize(rows, "test_acc", by=("contender", "seq_len", "dim"))
    worst = {(g["contender"], g["seq_len"], g["dim"]): g["min"] for g in groups}
    for name, n in dict.fromkeys((r["contender"], r["seq_len"]) for r in rows):
        cells_ = "".join(
            f"{worst[name, n, d]:8.3f}" if (name, n, d) in worst else f"{'':8s}"
            for d in widths
        )
        lines.append(f"{f'{name} n={n}':22s}{cells_}")
    return "\n".join(lines)


TOY = "--contenders attention --widths 8 --lengths 9 --seeds 0 --steps 2"
BENCHMARK = bench.Benchmark(
    "zoology", __doc__, cells, "zoology_{tag}.json", add_arguments,
    [*TOY.split(), "--vocab-size", "8"], cell=bakeoff.cell, report=table,
    device=None,
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return {"rows": BENCHMARK.main(argv)}


if __name__ == "__main__":
    main()
