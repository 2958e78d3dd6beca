"""The bake-off of chapter 9: every contender on recall, tuned, over seeds.

Two phases per contender, one grid file (``minimodels.experiments``):

1. **tuning**: the contender at each learning rate (``--lrs``, default
   ``minimodels.bakeoff.LRS``: 1e-3, 3e-3, 1e-2) from the tuning seeds
   (``--seeds``, default seed 0 alone: the two CPU cores were shared by many
   jobs), with ``minimodels.bakeoff.RECIPE`` for the rest; each run is scored
   on 1,000 validation questions and 1,000 separate test questions;
2. **other seeds**: the contender again at the learning rate whose mean
   validation accuracy over the tuning seeds was best (``experiments.tune``),
   from seeds that played no part in choosing it (``--new-seeds``, default
   1 to 5).

The chapter reports test accuracy over seeds 0-2 at each contender's chosen
rate, and checks that its conclusions hold again on seeds 3-5, a re-run from
seeds that neither chose the rates nor made the table. Contenders run one after
the other (``--contenders``, in order), so an interrupted run leaves whole
contenders.

It prints each phase's test accuracy per contender (mean, min, max over seeds)
and writes every row with its provenance. A finished cell is never re-run, so an
interrupted run resumes. The committed CPU run (7 contenders x (3 rates + 5
seeds): 56 runs, about 15 CPU-minutes):

    nice -n 10 python -m benchmarks.bakeoff --processes 2 \\
        --out figures/data/bakeoff_cpu.json
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from minimodels import bakeoff, bench, experiments

ORDER = ("attention", "h3", "hierarchical", "s4d", "hyena", "dilated",
         "block_recurrent")  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--contenders", nargs="+", default=list(ORDER),
                   choices=list(bakeoff.CONTENDERS))  # fmt: skip
    p.add_argument("--lrs", type=float, nargs="+", default=list(bakeoff.LRS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--new-seeds", type=int, nargs="*", default=[1, 2, 3, 4, 5])
    p.add_argument("--steps", type=int, default=bakeoff.RECIPE["steps"])
    p.add_argument("--params", type=int, default=bakeoff.RECIPE["params"])
    p.add_argument("--seq-len", type=int, default=bakeoff.RECIPE["seq_len"])
    p.add_argument("--warmup", type=int, default=bakeoff.RECIPE["warmup"])


def cells(
    args: argparse.Namespace, lrs: Mapping[str, Sequence[float]], seeds: Sequence[int]
) -> list[dict]:
    recipe = {**bakeoff.RECIPE, "steps": args.steps, "params": args.params,
              "seq_len": args.seq_len, "warmup": args.warmup}  # fmt: skip
    return [
        {"contender": name, **recipe, "lr": lr, "seed": seed}
        for name, rates in lrs.items()
        for lr in rates
        for seed in seeds
    ]


def report(rows: list[dict], title: str) -> str:
    lines = [title, f"{'':16s}{'lr':>8s}{'test mean':>11s}{'min':>7s}{'max':>7s}"]
    lr = {r["contender"]: r["lr"] for r in rows}
    for s in experiments.summarize(rows, "test_acc"):
        lines.append(f"{s['contender']:16s}{lr[s['contender']]:8.0e}"
                     f"{s['mean']:11.3f}{s['min']:7.3f}{s['max']:7.3f}")  # fmt: skip
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    # one contender at a time, tuned and then re-run from new seeds, so that an
    # interrupted run leaves whole contenders (run_grid keeps every stored row)
    done: list[dict] = []
    tuned: list[dict] = []
    new_rows: list[dict] = []
    for name in args.contenders:
        lrs: dict[str, Sequence[float]] = {name: sorted(set(args.lrs))}
        grid = cells(args, lrs, args.seeds)
        rows = experiments.run_grid(
            bakeoff.cell, done + grid, description=f"{name}: tuning",
            **bench.grid_options(args),
        )  # fmt: skip
        best = experiments.tune(rows[len(done) : len(done + grid)], select="val_acc")
        new = cells(args, {name: [best[0]["lr"]]}, args.new_seeds)
        rows = experiments.run_grid(
            bakeoff.cell, done + grid + new, description=f"{name}: new seeds",
            **bench.grid_options(args),
        )  # fmt: skip
        done += grid + new
        tuned += best
        new_rows += rows[len(done) - len(new) : len(done)]
    print(report(tuned, f"tuning seeds {args.seeds}, at each best lr"))
    if args.new_seeds:
        print(report(new_rows, f"new seeds {args.new_seeds}"))
    return {"rows": rows[: len(done)], "tuned": tuned, "new": new_rows}


TOY = "--contenders attention --lrs 1e-3 --seeds 0 --new-seeds --steps 2"
BENCHMARK = bench.Benchmark(
    "bakeoff", __doc__, run, "bakeoff_{tag}.json", add_arguments,
    [*TOY.split(), "--params", "3000", "--seq-len", "7"], grid=True, device=None,
)  # fmt: skip
main = BENCHMARK.main

if __name__ == "__main__":
    main()
