"""``python -m minimodels``: the book's chapters and their experiments, from a terminal.

    python -m minimodels list                      # chapters, modules, contenders
    python -m minimodels run h3 --task recall      # train chapter 3's model
    python -m minimodels speed hyena --lengths 256 1024 4096

``run`` trains one chapter's model (a contender of the bake-off, chapter 9) on
one of the bake-off's tasks with a progress bar and prints its score; ``speed``
times its forward + backward pass. Both can write their result as JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from minimodels import bakeoff, bench
from minimodels.train import TrainConfig

TASKS = ("recall", "induction", "bytes")


def _manifest() -> dict | None:
    """book.toml, when this package runs from a checkout of the book."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            return None
    path = Path(__file__).resolve().parent.parent / "book.toml"
    return tomllib.loads(path.read_text()) if path.exists() else None


def list_chapters() -> str:
    contenders = {chapter: name for name, (chapter, _) in bakeoff.CONTENDERS.items()}
    lines = []
    manifest = _manifest()
    if manifest is None:
        lines.append("(book.toml not found: showing the library's contenders only)")
        for chapter, name in sorted(contenders.items()):
            lines.append(f"{chapter:2d}  run {name}")
        return "\n".join(lines)
    for entry in manifest["chapters"]:
        chapter = int(Path(entry["file"]).name.split("-")[0])
        run = f"run {contenders[chapter]}" if chapter in contenders else ""
        title, module = entry["title"], entry["module"]
        lines.append(f"{chapter:2d}  {title:32s} {module:30s} {run}".rstrip())
    return "\n".join(lines)


def _task(name: str, seq_len: int) -> bakeoff.Task:
    if name == "recall":
        return bakeoff.recall_task(seq_len)
    if name == "induction":
        return bakeoff.induction_task(seq_len)
    from minimodels.data import stdlib_corpus

    return bakeoff.bytes_task(stdlib_corpus(1_000_000), seq_len)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minimodels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the chapters, their modules and experiments")
    names = list(bakeoff.CONTENDERS)
    run = commands.add_parser("run", help="train one chapter's model on a task")
    run.add_argument("contender", choices=names)
    run.add_argument("--task", choices=TASKS, default="recall")
    run.add_argument(
        "--seq-len", type=int, help="default: 63 recall, 64 induction, 128 bytes"
    )
    run.add_argument("--params", type=int, default=60_000)
    run.add_argument("--steps", type=int, default=200)
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--lr", type=float, default=3e-3)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", type=Path, default=None, help="write the row as JSON")
    speed = commands.add_parser("speed", help="time forward + backward vs length")
    speed.add_argument("contender", choices=names)
    speed.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024])
    speed.add_argument("--dim", type=int, default=64)
    speed.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    speed.add_argument("--out", type=Path, default=None, help="write rows as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        print(list_chapters())
        return 0
    if args.command == "run":
        default_len = {"recall": 63, "induction": 64, "bytes": 128}[args.task]
        task = _task(args.task, args.seq_len or default_len)
        config = TrainConfig(
            steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            weight_decay=0.0, eval_every=max(1, args.steps // 4), seed=args.seed,
        )  # fmt: skip
        row = bakeoff.run(args.contender, task, params=args.params, config=config)
        print(f"{row['contender']} on {row['task']}: {task.metric} "
              f"{row[task.metric]:.3f} ({row['params']:,} parameters, width "
              f"{row['dim']}, {row['seconds']:.0f} s)")  # fmt: skip
        if args.out:
            bench.save_json([row], args.out)
        return 0
    rows = bakeoff.speed(args.contender, args.lengths, dim=args.dim, device=args.device)
    for row in rows:
        print(f"n={row['n']:6d}  {row['median_s'] * 1e3:9.2f} ms  "
              f"{row['peak_bytes'] / 2**20:9.1f} MiB")  # fmt: skip
    if args.out:
        bench.save_json(rows, args.out, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
