"""``python -m minimodels``: the book's chapters and their experiments, from a terminal.

    python -m minimodels list                      # chapters, modules, contenders
    python -m minimodels run attention             # the book's recall recipe
    python -m minimodels run h3 --seeds 3          # mean, min and max over 3 seeds
    python -m minimodels speed hyena --lengths 256 1024 4096

``run`` trains one chapter's model (a contender of the bake-off, chapter 9) and
prints its score. On recall (the default task) it follows the book's recipe,
``minimodels.bakeoff.RECIPE`` at the learning rate the bake-off tuned for that
contender, and scores 1,000 test questions; every option overrides one part of
it. ``speed`` times a forward + backward pass. Both can write JSON (``--out``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from minimodels import __version__, bakeoff, bench, manifest, registry
from minimodels.train import TrainConfig

TASKS = ("recall", "induction", "bytes")
DEFAULT_LEN = {"recall": bakeoff.RECIPE["seq_len"], "induction": 64, "bytes": 128}
OTHER_TASKS_LR = 3e-3  # induction and bytes: not tuned by the bake-off


def list_chapters() -> str:
    """One line per chapter of the manifest (book.toml in a checkout, the copy the
    package ships from a wheel), with the ``run`` command of its models."""
    lines = []
    for chapter in manifest.load().chapters:
        models = registry.MODELS.values()
        run = ", ".join(f"run {m.name}" for m in models if m.chapter == chapter.number)
        title, module = chapter.title, chapter.module
        lines.append(f"{chapter.number:2d}  {title:32s} {module:30s} {run}".rstrip())
    return "\n".join(lines)


# argparse types: a bad value is refused by name before anything runs


def _ranged(kind: Callable, low: float, what: str) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (math.isfinite(value) and value >= low):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _ranged(int, 1, "a positive integer")
natural_int = _ranged(int, 0, "an integer >= 0")


def positive_float(text: str) -> float:
    value = _ranged(float, 0, "a finite number > 0")(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number > 0")
    return value


def device_name(text: str) -> str:
    """cpu, or cuda[:i] when CUDA is available."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device") from None
    if device.type == "cpu":
        return text
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError("cuda is not available on this machine")
        return text
    raise argparse.ArgumentTypeError(f"device must be cpu or cuda, got {text!r}")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minimodels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the chapters, their modules and experiments")
    names = list(registry.MODELS)  # every model is a contender of the bake-off
    recipe = bakeoff.RECIPE
    run = commands.add_parser("run", help="train one chapter's model on a task")
    run.add_argument("contender", choices=names)
    run.add_argument("--task", choices=TASKS, default="recall")
    run.add_argument("--seq-len", type=positive_int,
                     help=f"default: {DEFAULT_LEN}")  # fmt: skip
    run.add_argument("--params", type=positive_int, default=recipe["params"])
    run.add_argument("--steps", type=positive_int, default=recipe["steps"])
    run.add_argument("--batch-size", type=positive_int, default=recipe["batch_size"])
    run.add_argument("--lr", type=positive_float, default=None,
                     help="default: the bake-off's tuned lr on recall (BEST_LR), "
                     f"{OTHER_TASKS_LR} on the other tasks")  # fmt: skip
    run.add_argument("--seed", type=natural_int, default=0, help="the first seed")
    run.add_argument("--seeds", type=positive_int, default=1,
                     help="seeds SEED .. SEED+K-1; report mean/min/max")  # fmt: skip
    run.add_argument("--device", type=device_name, default="cpu")
    run.add_argument("--threads", type=positive_int, default=1,
                     help="CPU threads (1: fastest for small models)")  # fmt: skip
    run.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    speed = commands.add_parser("speed", help="time forward + backward vs length")
    speed.add_argument("contender", choices=names)
    speed.add_argument("--lengths", type=positive_int, nargs="+",
                       default=[256, 512, 1024])  # fmt: skip
    speed.add_argument("--dim", type=positive_int, default=64)
    speed.add_argument("--device", type=device_name, default=_default_device(),
                       help="default: cuda when available, else cpu")  # fmt: skip
    speed.add_argument("--out", type=Path, default=None, help="write rows as JSON")
    return parser


def _recall_row(args: argparse.Namespace, seed: int) -> dict:
    lr = args.lr if args.lr is not None else bakeoff.BEST_LR[args.contender]
    cell = {"contender": args.contender, **bakeoff.RECIPE, "seq_len": args.seq_len,
            "params": args.params, "steps": args.steps,
            "batch_size": args.batch_size, "lr": lr, "seed": seed}  # fmt: skip
    row = {**cell, **bakeoff.cell(cell, device=args.device)}
    print(f"{args.contender} on recall n={args.seq_len}, seed {seed}: test accuracy "
          f"{row['test_acc']:.3f} on {bakeoff.QUESTIONS:,} questions (validation "
          f"{row['val_acc']:.3f}; {row['n_params']:,} parameters, width "
          f"{row['width']}, lr {lr:g}, {row['cpu_s']:.0f} CPU-s)")  # fmt: skip
    return row


def _task(name: str, seq_len: int) -> bakeoff.Task:
    if name == "induction":
        return bakeoff.induction_task(seq_len)
    from minimodels.data import stdlib_corpus

    return bakeoff.bytes_task(stdlib_corpus(1_000_000), seq_len)


def _other_row(args: argparse.Namespace, seed: int) -> dict:
    task = _task(args.task, args.seq_len)
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else OTHER_TASKS_LR, weight_decay=0.0,
        eval_every=max(1, args.steps // 4), seed=seed,
    )  # fmt: skip
    row = bakeoff.run(
        args.contender, task, params=args.params, config=config, device=args.device
    )
    print(f"{row['contender']} on {row['task']}, seed {seed}: {task.metric} "
          f"{row[task.metric]:.3f} ({row['params']:,} parameters, width "
          f"{row['dim']}, {row['seconds']:.0f} s)")  # fmt: skip
    return {**row, "seed": seed}


def _run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    args.seq_len = args.seq_len or DEFAULT_LEN[args.task]
    one = _recall_row if args.task == "recall" else _other_row
    rows = [one(args, seed) for seed in range(args.seed, args.seed + args.seeds)]
    metric = {"recall": "test_acc", "induction": "accuracy", "bytes": "bits"}
    scores = [r[metric[args.task]] for r in rows]
    if len(rows) > 1:
        print(f"{metric[args.task]} over {len(rows)} seeds: mean "
              f"{statistics.fmean(scores):.3f}, min {min(scores):.3f}, "
              f"max {max(scores):.3f}")  # fmt: skip
    if args.out:
        bench.save_json(rows, args.out, device=args.device)
    return 0


def _speed(args: argparse.Namespace) -> int:
    rows = bakeoff.speed(args.contender, args.lengths, dim=args.dim, device=args.device)
    for row in rows:
        print(f"n={row['n']:6d}  {row['median_s'] * 1e3:9.2f} ms  "
              f"{row['peak_bytes'] / 2**20:9.1f} MiB")  # fmt: skip
    if args.out:
        bench.save_json(rows, args.out, device=args.device)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        print(list_chapters())
        return 0
    try:
        return _run(args) if args.command == "run" else _speed(args)
    except ValueError as error:  # the library's checks name the bad argument
        print(f"python -m minimodels {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
