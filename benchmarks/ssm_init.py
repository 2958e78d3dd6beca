"""Does S4D's initialisation matter? S4D-Lin, S4D-Inv and random A (chapter 2).

The long-range task and model of ``benchmarks.ssm_longrange`` (its ``run_cell``:
the sign of a moving average with tau = 256 at length 4096, a one-block ``LM``
of width 32 with S4D, ``d_state=16``, 80 steps of 2 fresh sequences, the same
validation and test sets), with S4D's A initialised three ways
(``minimodels.ssm.s4d_init``): S4D-Lin (Im A_n = pi n), S4D-Inv (Im A_n =
N/pi (N/(2n+1) - 1)) and random (Im A_n = pi (N/2) u, u ~ U[0, 1) per channel:
S4D-Lin's range of frequencies at random places, the S4 code's
``dplr(init="lin", imag_random=True)``); Re A_n = -1/2 in all three. Each init
trains at three learning rates around S4D-Inv's tuned 3e-2 in the long-range grid
(1e-2, 3e-2, 1e-1) over three seeds; the rate is chosen per init by
mean validation accuracy and the chosen runs are scored on the test set.

    python -m benchmarks.ssm_init   # -> figures/data/ssm_init_cpu.json

``--toy`` runs a tiny grid (length 64, 3 steps, 2 seeds, 1 learning rate) for
the tests. Every cell is one thread; the file records provenance and resumes.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks import ssm_longrange
from minimodels import bench, experiments

INITS = ("lin", "inv", "random")
LRS = (1e-2, 3e-2, 1e-1)
SEEDS = (0, 1, 2)
CELL_NAMES = ("init", *ssm_longrange.CELL_NAMES)
run_cell = ssm_longrange.run_cell  # the long-range cell; "init" picks S4D's A


def cells(
    size: dict[str, int] = ssm_longrange.FULL,
    *,
    seeds: tuple = SEEDS,
    lrs: tuple = LRS,
) -> list[dict[str, Any]]:
    return [
        {"init": i, "contender": "s4d", "seed": s, "lr": lr, **size}
        for i in INITS
        for s in seeds
        for lr in lrs
    ]


def report(rows: list[dict[str, Any]]) -> str:
    """Validation by init and rate (over seeds), then test at the chosen rate."""
    val = experiments.summarize(rows, "val_acc", by=("init", "lr"))
    tuned = experiments.tune(rows, select="val_acc", by=("init",))
    test = experiments.summarize(tuned, "test_acc", by=("init", "lr"))
    return "\n".join(
        experiments.summary_lines(val, ("init",), metric="val")
        + experiments.summary_lines(test, ("init",))
    )


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    return cells(ssm_longrange.TOY, seeds=(0, 1), lrs=(1e-2,)) if args.toy else cells()


BENCHMARK = bench.Benchmark(
    "ssm_init", __doc__, grid, "ssm_init_{tag}.json", cell=run_cell, report=report,
    device=None,
)  # fmt: skip
main = BENCHMARK.main
if __name__ == "__main__":
    main()
