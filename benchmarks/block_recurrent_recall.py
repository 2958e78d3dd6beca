"""Chapter 7's trained results: recall beyond the window, and bits per byte.

    python -m benchmarks.block_recurrent_recall          # the committed grid
    python -m benchmarks.block_recurrent_recall --toy    # one cell, into _build/toy/

Every cell trains one two-layer ``BlockRecurrentTransformer`` (width 64, 4 heads
of 16, blocks of W = 8 tokens, 8 state vectors in layer 2) as a *contender*:

- ``skip``: the recurrent cell of the seed package, one gate on the states;
- ``dual``: the paper's full cell, ``state_mlp=True`` (an MLP and a second gate);
- ``off``: the ``skip`` model with ``carry_states=False``: every block reads the
  learned initial state, at the same parameters and compute;

on a *task*:

- ``recall``: ``distant_recall`` with one key-value pair in block 0, three
  blocks of noise, and the query at the end of the fifth block, 31-38 positions
  after the pair (the windows of two layers reach 16). 8 keys, 16 values.
  Validation and test are 1,000 questions each, drawn with different seeds;
- ``text``: next-byte prediction on Python's standard library
  (``stdlib_corpus(300_000)``, windows of 64 bytes, blocks of 16). The
  validation bytes are split in two halves: the first (``val_bits``) would pick
  the learning rate, the second (``test_bits``) is reported;

at a learning rate ``lr`` and a ``seed`` (the init and the batch order). Rows
and provenance go to ``figures/data/block_recurrent_recall_cpu.json``.

The grid is small because the book's machine is small and shared: recall trains
100 steps at three learning rates (5e-4, 1e-3, 3e-3), text at one (3e-3),
three seeds each, and the cells run in ``ORDER``, so an interrupted run
(``--tasks recall``, or a kill) keeps the main comparison and resumes where it
stopped. Widen ``LRS`` on a bigger machine (``--processes``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

import torch

from minimodels import bench, experiments
from minimodels.block_recurrent import (
    BlockRecurrentLM,
    BlockRecurrentTransformer,
    RecurrentTrainWrapper,
)
from minimodels.data import distant_recall, random_windows, stdlib_corpus
from minimodels.train import TrainConfig, evaluate, train

RECALL = dict(block_width=8, gap_blocks=3, num_pairs=1, num_keys=8, num_values=16)
TEXT_SEQ, TEXT_BLOCK, TEXT_BYTES = 64, 16, 300_000
CONTENDERS: dict[str, dict[str, Any]] = {
    "skip": {}, "dual": {"state_mlp": True}, "off": {"carry_states": False}
}  # fmt: skip
# task -> (training steps, batch size) at full size
TASKS: dict[str, tuple[int, int]] = {"recall": (100, 32), "text": (200, 16)}
LRS = {"recall": [5e-4, 1e-3, 3e-3], "text": [3e-3]}
# the order of the grid: the main comparison first, then the full cell, then text
ORDER = [("recall", "skip"), ("recall", "off"), ("recall", "dual"), ("text", "skip"),
         ("text", "off")]  # fmt: skip
SEEDS = [0, 1, 2]
CELL_NAMES = ("task", "contender", "lr", "seed", "steps", "questions")


def build(task: str, contender: str) -> BlockRecurrentLM:
    """The model of one contender for one task (initialised from the current
    seed)."""
    recall = task == "recall"
    w = RECALL["block_width"] if recall else TEXT_BLOCK
    vocab = RECALL["num_keys"] + RECALL["num_values"] + 1 if recall else 256
    seq = (RECALL["gap_blocks"] + 2) * w if recall else TEXT_SEQ
    model = BlockRecurrentTransformer(
        num_tokens=vocab, dim=64, depth=2, dim_head=16, heads=4, max_seq_len=seq,
        block_width=w, num_state_vectors=8, recurrent_layers=(2,),
        **CONTENDERS[contender],
    )  # fmt: skip
    return BlockRecurrentLM(RecurrentTrainWrapper(model))


def recall_batches(batch_size: int, g: torch.Generator) -> tuple[Any, Any]:
    """Fresh training questions (seeds 1000 and up; validation 1, test 2)."""
    seed = 1000 + int(torch.randint(0, 2**30, (1,), generator=g))
    return distant_recall(batch_size, seed=seed, **RECALL)


def _windows(data: torch.Tensor):
    return lambda batch_size, g: random_windows(data, batch_size, TEXT_SEQ, g)


def _bits(model: BlockRecurrentLM, data: torch.Tensor, batches: int) -> float:
    loss, _ = evaluate(model, _windows(data), batch_size=32, batches=batches)
    return loss / math.log(2)


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Train one cell; validation and test accuracy (recall) or bits per byte."""
    task, steps = cell["task"], cell["steps"]
    config = TrainConfig(
        steps=steps, batch_size=TASKS[task][1], lr=cell["lr"],
        warmup=min(20, steps // 5), eval_every=max(1, steps // 2),
        eval_batches=4, seed=cell["seed"], progress=False,
    )  # fmt: skip
    torch.manual_seed(cell["seed"])
    model = build(task, cell["contender"])
    if task == "recall":
        val = distant_recall(cell["questions"], seed=1, **RECALL)
        test = distant_recall(cell["questions"], seed=2, **RECALL)
        history = train(model, recall_batches, val, config)
        _, test_acc = evaluate(model, test, batch_size=250, batches=None)
        return {
            "val_acc": history.final_acc, "test_acc": test_acc,
            "curve_steps": history.step, "curve_val_acc": history.val_acc,
            "seconds": history.seconds[-1],
        }  # fmt: skip
    corpus = stdlib_corpus(TEXT_BYTES)
    half = len(corpus.val) // 2
    val_bytes, test_bytes = corpus.val[:half], corpus.val[half:]
    history = train(model, _windows(corpus.train), _windows(val_bytes), config)
    batches = max(1, cell["questions"] // 64)  # windows of 64 bytes, 32 a batch
    return {
        "val_bits": _bits(model, val_bytes, batches),
        "test_bits": _bits(model, test_bytes, batches),
        "seconds": history.seconds[-1],
    }


def unigram_bits(data: torch.Tensor, reference: torch.Tensor) -> float:
    """Bits per byte of ``data`` under the byte frequencies of ``reference``
    (add-one smoothed): the baseline a model that ignores context reaches."""
    counts = torch.bincount(reference, minlength=256).double() + 1
    logp = (counts / counts.sum()).log2()
    return float(-logp[data].mean())


def cells(
    tasks: Sequence[str],
    contenders: Sequence[str],
    seeds: Sequence[int],
    *,
    lrs: Sequence[float] | None = None,
    scale: float = 1.0,
    questions: int = 1000,
) -> list[dict[str, Any]]:
    """Every (task, contender, lr, seed) in ``ORDER``, with ``scale`` x the full
    step count; ``lrs`` replaces each task's learning rates."""
    return [
        {"task": t, "contender": c, "lr": lr, "seed": s,
         "steps": max(1, round(TASKS[t][0] * scale)), "questions": questions}
        for t, c in ORDER if t in tasks and c in contenders
        for lr in (lrs or LRS[t]) for s in seeds
    ]  # fmt: skip


def table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and contender: the test metric at the lr tuned on validation."""
    out = []
    for task, (select, metric, higher) in {
        "recall": ("val_acc", "test_acc", True),
        "text": ("val_bits", "test_bits", False),
    }.items():
        group = [r for r in rows if r["task"] == task]
        if not group:
            continue
        tuned = experiments.tune(
            group, select=select, by=("contender",), higher_is_better=higher
        )
        lrs = {r["contender"]: r["lr"] for r in tuned}
        for s in experiments.summarize(tuned, metric, by=("contender",)):
            out.append({"task": task, **s, "lr": lrs[s["contender"]]})
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    bench.add_grid_arguments(
        p, tasks=list(TASKS), contenders=list(CONTENDERS), lrs=None, seeds=SEEDS
    )


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    size = {"scale": args.scale, "questions": args.questions}
    return cells(args.tasks, args.contenders, args.seeds, lrs=args.lrs, **size)


def report(rows: Sequence[dict[str, Any]]) -> str:
    summary = table(rows)
    return "\n".join(experiments.summary_lines(summary, ("task", "contender")))


BENCHMARK = bench.Benchmark(
    "block_recurrent_recall", __doc__, grid, "block_recurrent_recall_{tag}.json",
    add_arguments, cell=run_cell, report=report, device=None,
    toy="--scale 0.02 --questions 64 --tasks recall --contenders skip --lrs 1e-3 "
    "--seeds 0".split(),
)  # fmt: skip
main = BENCHMARK.main

if __name__ == "__main__":
    main()
