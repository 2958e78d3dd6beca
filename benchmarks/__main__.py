"""List the benchmarks, or run them all at their CPU defaults.

    python -m benchmarks                       # list them
    python -m benchmarks --all [--out-dir D]   # run each, JSON to D/NAME.json
    python -m benchmarks --all --toy           # each at its toy size (seconds)

``make bench`` runs them all into ``_build/bench/`` (the committed results under
``figures/data/`` are left alone; copy a file there to update a chapter). Each
benchmark's docstring gives the command for its GPU run.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Sequence
from pathlib import Path

import benchmarks


def names() -> list[str]:
    here = Path(benchmarks.__file__).parent
    return sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if m.name != "__main__"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--all", action="store_true", help="run every benchmark")
    parser.add_argument("--only", nargs="+", choices=names(), default=None)
    parser.add_argument("--out-dir", type=Path, default=Path("_build/bench"))
    parser.add_argument("--toy", action="store_true", help="each at its toy size")
    args = parser.parse_args(argv)
    chosen = args.only or (names() if args.all else None)
    if chosen is None:
        print("Run one with: python -m benchmarks.<name> --help")
        for name in names():
            summary = (
                importlib.import_module(f"benchmarks.{name}").__doc__ or ""
            ).strip()
            print(f"  {name:16s} {summary.splitlines()[0] if summary else ''}")
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in chosen:
        print(f"== {name}")
        module = importlib.import_module(f"benchmarks.{name}")
        if args.toy and not hasattr(module, "BENCHMARK"):
            print("skipped: not on the bench.Benchmark harness, no toy size")
            continue
        toy = ["--toy"] if args.toy else []
        module.main([*toy, "--out", str(args.out_dir / f"{name}.json")])


if __name__ == "__main__":
    main()
