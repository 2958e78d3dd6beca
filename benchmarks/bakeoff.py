"""The bake-off of chapter 9 at any size: quality and speed of every contender.

Trains every contender of ``minimodels.bakeoff`` (an LM of about ``--params``
parameters) with the same budget on associative recall at each ``--recall``
length, induction heads and bits per byte on Python's standard library, then
times forward + backward at each ``--speed`` length (width ``--speed-dim``). It
prints both tables, with each contender's time as a ratio to attention's in the
same run, and writes everything as JSON.

CPU, the size chapter 9 shows:

    python -m benchmarks.bakeoff --out figures/data/bakeoff_cpu.json

H100, the larger run the chapter shows beside it:

    python -m benchmarks.bakeoff --device cuda --params 2000000 --steps 2000 \\
        --recall 255 1023 4095 --induction 1024 --bytes 1024 \\
        --speed 1024 4096 16384 65536 --speed-dim 512 \\
        --out figures/data/bakeoff_h100.json
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from minimodels import bakeoff, bench
from minimodels.data import stdlib_corpus
from minimodels.train import TrainConfig


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--contenders", nargs="+", default=list(bakeoff.CONTENDERS))
    p.add_argument("--params", type=int, default=60_000)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--recall", type=int, nargs="*", default=[63, 255])
    p.add_argument("--induction", type=int, nargs="*", default=[64])
    p.add_argument("--bytes", type=int, nargs="*", default=[128])
    p.add_argument("--corpus-bytes", type=int, default=1_000_000)
    p.add_argument("--examples", type=int, default=4000, help="per synthetic task")
    p.add_argument("--speed", type=int, nargs="*", default=[256, 512, 1024, 2048])
    p.add_argument("--speed-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def tasks(args: argparse.Namespace) -> list[bakeoff.Task]:
    found = [bakeoff.recall_task(n, examples=args.examples) for n in args.recall]
    found += [bakeoff.induction_task(n, examples=args.examples) for n in args.induction]
    if args.bytes:
        corpus = stdlib_corpus(args.corpus_bytes)
        found += [bakeoff.bytes_task(corpus, n) for n in args.bytes]
    return found


def speed_table(rows: list[dict]) -> str:
    reference = {r["n"]: r["median_s"] for r in rows if r["contender"] == "attention"}
    lines = [f"{'':16s}{'n':>7s}{'ms':>10s}{'MiB':>9s}{'/ attention':>13s}"]
    for r in rows:
        ratio = r["median_s"] / reference[r["n"]] if r["n"] in reference else None
        shown = f"{ratio:13.2f}" if ratio is not None else f"{'':13s}"
        lines.append(
            f"{r['contender']:16s}{r['n']:7d}{r['median_s'] * 1e3:10.2f}"
            f"{r['peak_bytes'] / 2**20:9.1f}{shown}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=0.0,
        warmup=min(20, args.steps // 10), eval_every=max(1, args.steps // 4),
    )  # fmt: skip
    quality = bakeoff.grid(
        tasks(args), params=args.params, config=config, names=args.contenders,
        device=args.device,
    )  # fmt: skip
    print(bakeoff.table(quality))
    speed = [
        row
        for name in args.contenders
        for row in bakeoff.speed(
            name,
            args.speed,
            dim=args.speed_dim,
            repeats=args.repeats,
            device=args.device,
        )  # fmt: skip
    ]
    print(speed_table(speed))
    result = {"config": vars(args) | {"out": str(args.out)}, "quality": quality,
              "speed": speed}  # fmt: skip
    if args.out:
        bench.save_json(result, args.out, device=args.device)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
