"""Chapter 3's trained comparison: attention, S4D and H3 on recall and induction.

    python -m benchmarks.h3_recall            # the committed grid (CPU, ~5 CPU-min)
    python -m benchmarks.h3_recall --toy      # one cell, into _build/toy/
    python -m benchmarks.h3_recall --tasks recall induction \
        --contenders attention s4d h3 h3_hd1 h3_zoh   # everything (~30 CPU-min)

Every cell trains one two-layer ``minimodels.lm.LM`` (width 32, vocabulary 16)
whose sequence mixer is a *contender*:

- ``attention``: ``MultiHeadAttention``, 2 heads of 16;
- ``s4d``: the S4D block (S4D -> GELU -> Linear -> GLU), state 16;
- ``h3``: H3 with heads of dimension 8 (4 heads, an 8 x 8 memory each), state 16,
  bilinear discretization (the authors' default);
- ``h3_hd1``: H3 with head dimension 1 (32 heads), the paper's default;
- ``h3_zoh``: ``h3`` with S4D's zero-order hold instead of the bilinear transform;

on a *task*: associative recall (31 tokens, 15 pairs and the query; trained on
the multi-query form, scored on the last position only) or induction heads (30
tokens), at a learning rate ``lr`` and a ``seed`` (the model's init and the
batch order). The schedule warms up linearly over the first half of the steps
(``warmup`` = steps // 2, a cell key), then decays by cosine to 10% of ``lr``:
with a 20-step warm-up the rate had already decayed when attention's late,
seed-dependent jump from the counting baseline to recall was due (chapter 9's
finding, ``bakeoff.RECIPE["warmup"]``). It reports ``val_acc`` on 1,000
validation questions, which ``experiments.tune`` uses to pick each
contender's learning rate, and ``test_acc`` on 1,000 separate test questions,
which the chapter reports.
Rows and provenance go to ``figures/data/h3_recall_cpu.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from minimodels import bench, experiments
from minimodels.data import associative_recall, induction_heads
from minimodels.lm import LM, mixer_factory
from minimodels.train import History, TrainConfig, evaluate, train

VOCAB, WIDTH, DEPTH = 16, 32, 2
CONTENDERS: dict[str, tuple[str, dict[str, Any]]] = {
    "attention": ("attention", {"heads": 2}),
    "s4d": ("s4d", {"d_state": 16}),
    "h3": ("h3", {"d_state": 16, "head_dim": 8}),
    "h3_hd1": ("h3", {"d_state": 16, "head_dim": 1}),
    "h3_zoh": ("h3", {"d_state": 16, "head_dim": 8, "discretization": "zoh"}),
}
# task -> (sequence length, training steps, batch size) at full size
TASKS: dict[str, tuple[int, int, int]] = {
    "recall": (31, 300, 32),
    "induction": (30, 200, 64),
}
# the head-dimension and discretization variants run on recall only
TASK_CONTENDERS = {
    "recall": ["attention", "s4d", "h3", "h3_hd1", "h3_zoh"],
    "induction": ["attention", "s4d", "h3", "h3_hd1"],
}
LRS = [1e-3, 3e-3, 1e-2]
SEEDS = [0, 1, 2]
CELL_NAMES = ("task", "contender", "lr", "seed", "steps", "warmup", "questions")


def build(contender: str) -> LM:
    """The language model of one contender (initialised from the current seed)."""
    name, options = CONTENDERS[contender]
    return LM(VOCAB, WIDTH, DEPTH, mixer_factory(name, **options))


def task_data(task: str, questions: int) -> tuple[Any, Any, Any]:
    """Training set (4,000 sequences), validation and test sets (``questions``
    each); the three are drawn with different seeds, so no test question chose a
    learning rate."""
    n = TASKS[task][0]
    make: Callable[..., tuple[Tensor, Tensor]] = induction_heads
    options = {}
    if task == "recall":
        make, options = associative_recall, {"multi_query": True}
    train_set = make(4000, n, VOCAB, seed=0, **options)
    val_set = make(questions, n, VOCAB, seed=1)
    return train_set, val_set, make(questions, n, VOCAB, seed=2)


def train_cell(cell: dict[str, Any], *, progress: bool = False) -> tuple[LM, History]:
    """The trained model of one cell and its training history (``run_cell``'s
    recipe: chapter 3 looks inside the model this returns)."""
    train_set, val_set, _ = task_data(cell["task"], cell["questions"])
    batch = TASKS[cell["task"]][2]
    steps = cell["steps"]
    config = TrainConfig(
        steps=steps, batch_size=batch, lr=cell["lr"], warmup=cell["warmup"],
        weight_decay=0.0, eval_every=steps, seed=cell["seed"], progress=progress,
    )  # fmt: skip
    torch.manual_seed(cell["seed"])
    model = build(cell["contender"])
    return model, train(model, train_set, val_set, config)


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Train one cell; returns validation and test accuracy."""
    model, history = train_cell(cell)
    test_set = task_data(cell["task"], cell["questions"])[2]
    _, test_acc = evaluate(model, test_set, batch_size=256, batches=None)
    return {
        "val_acc": history.final_acc,
        "test_acc": test_acc,
        "train_loss": history.train_loss[-1],
        "seconds": history.seconds[-1],
    }


def cells(
    tasks: Sequence[str],
    contenders: Sequence[str],
    lrs: Sequence[float],
    seeds: Sequence[int],
    *,
    scale: float = 1.0,
    questions: int = 1000,
) -> list[dict[str, Any]]:
    """Every (task, contender, lr, seed), with ``scale`` x the full step count
    and a linear warm-up over the first half of the steps (``warmup``)."""
    steps = {t: max(1, round(TASKS[t][1] * scale)) for t in tasks}
    return [
        {"task": t, "contender": c, "lr": lr, "seed": s, "steps": steps[t],
         "warmup": steps[t] // 2, "questions": questions}
        for t in tasks for c in contenders for lr in lrs for s in seeds
    ]  # fmt: skip


def priority(cell: dict[str, Any]) -> tuple:
    """The order cells run in: H3 first, then S4D, attention, the ZOH variant;
    the smallest learning rate last. A grid stopped early (the book's machine
    is shared) then still holds whole groups of seeds for the main claims."""
    order = ["h3", "h3_hd1", "s4d", "attention", "h3_zoh"]
    return (cell["lr"] == min(LRS), cell["task"] != "recall",
            order.index(cell["contender"]), cell["lr"], cell["seed"])  # fmt: skip


def table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and contender: test accuracy at the lr tuned on validation."""
    tuned = experiments.tune(rows, select="val_acc", by=("task", "contender"))
    summary = experiments.summarize(tuned, "test_acc", by=("task", "contender"))
    lrs = {(r["task"], r["contender"]): r["lr"] for r in tuned}
    return [{**s, "lr": lrs[s["task"], s["contender"]]} for s in summary]


def add_arguments(p: argparse.ArgumentParser) -> None:
    bench.add_grid_arguments(
        p, tasks=list(TASKS), default_tasks=["recall"], contenders=list(CONTENDERS),
        default_contenders=["attention", "s4d", "h3", "h3_hd1"], lrs=LRS,
        seeds=SEEDS,
    )  # fmt: skip


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The cells the arguments ask for, in ``priority`` order."""
    size = {"scale": args.scale, "questions": args.questions}
    chosen = []
    for task in args.tasks:
        names = [c for c in args.contenders if c in TASK_CONTENDERS[task]]
        chosen += cells([task], names, args.lrs, args.seeds, **size)
    return sorted(chosen, key=priority)


def report(rows: Sequence[dict[str, Any]]) -> str:
    return "\n".join(experiments.summary_lines(table(rows), ("task", "contender")))


TOY = "--scale 0.02 --questions 64 --contenders attention --lrs 3e-3 --seeds 0"
BENCHMARK = bench.Benchmark(
    "h3_recall", __doc__, grid, "h3_recall_{tag}.json", add_arguments,
    TOY.split(), cell=run_cell, report=report, device=None,
)  # fmt: skip
main = BENCHMARK.main

if __name__ == "__main__":
    main()
