"""The bake-off: every mixer of the book as a language model of the same size,
trained with the same budget on the same tasks, then timed on the same inputs.

The method follows the synthetic-task studies that compare sub-quadratic mixers,
Arora et al., "Zoology: Measuring and Improving Recall in Efficient Language
Models" (2023, arXiv:2312.04927), at CPU size: associative recall (multi-query
in training, one query in validation) at growing length, induction heads, and
bits per byte on Python's own standard library; then forward + backward time and
memory against sequence length.

Contenders (chapter): ``attention`` (0), ``s4d`` (2), ``h3`` (3), ``hyena`` (4),
``dilated`` (6), ``block_recurrent`` (7), ``hierarchical`` (8). ``build`` makes
any of them as ``ids (b n) -> logits (b n v)``; ``width_for`` picks the width
that gives a target parameter count, so the models compare at equal size.

Shapes: b batch, n sequence, v vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from minimodels import bench, data
from minimodels._util import check, check_positive
from minimodels.lm import LM, count_parameters, mixer_factory
from minimodels.train import Data, TrainConfig, train

__all__ = [
    "CONTENDERS",
    "Task",
    "build",
    "width_for",
    "recall_task",
    "induction_task",
    "bytes_task",
    "run",
    "grid",
    "table",
    "speed",
]

HEADS = 2  # every attention-like contender splits its width into 2 heads
WIDTH_STEP = 4  # widths are multiples of this


Builder = Callable[[int, int, int, int], nn.Module]  # (vocab, dim, depth, n)


def _lm(mixer: str, options: Callable[[int, int], dict]) -> Builder:
    """A ``minimodels.lm.LM`` whose mixer's options depend on (dim, n)."""

    def make(vocab: int, dim: int, depth: int, n: int) -> nn.Module:
        return LM(vocab, dim, depth, mixer_factory(mixer, **options(dim, n)))

    return make


def _dilated_branches(n: int) -> dict:
    """LongNet's geometric branches w = 16 * 4^i, r = 4^i, until w >= n."""
    levels = 1
    while 16 * 4 ** (levels - 1) < n:
        levels += 1
    return {
        "segment_lengths": tuple(16 * 4**i for i in range(levels)),
        "dilation_rates": tuple(4**i for i in range(levels)),
    }


def _block_recurrent(vocab: int, dim: int, depth: int, n: int) -> nn.Module:
    from minimodels.block_recurrent import (
        BlockRecurrentLM,
        BlockRecurrentTransformer,
        RecurrentTrainWrapper,
    )

    w = 16
    model = BlockRecurrentTransformer(
        num_tokens=vocab, dim=dim, depth=depth, dim_head=dim // HEADS,
        heads=HEADS, max_seq_len=w * math.ceil(n / w), block_width=w,
        num_state_vectors=8, recurrent_layers=(depth,),
    )  # fmt: skip
    return BlockRecurrentLM(RecurrentTrainWrapper(model))


def _hierarchical(vocab: int, dim: int, depth: int, n: int) -> nn.Module:
    from minimodels.hierarchical import HierarchicalTransformer

    return HierarchicalTransformer(
        num_tokens=vocab, dim=dim, depth=depth, seq_len=n, dim_head=dim // HEADS,
        heads=HEADS, hierarchies=(1, 4), window_sizes=(16, None),
    )  # fmt: skip


# name -> (the chapter that builds it, builder)
CONTENDERS: dict[str, tuple[int, Builder]] = {
    "attention": (0, _lm("attention", lambda d, n: {"heads": HEADS})),
    "s4d": (2, _lm("s4d", lambda d, n: {"d_state": 16})),
    "h3": (3, _lm("h3", lambda d, n: {"d_state": 16, "head_dim": 8})),
    "hyena": (4, _lm("hyena", lambda d, n: {"max_len": n, "filter_order": 32})),
    "dilated": (
        6,
        _lm("dilated", lambda d, n: {"heads": HEADS, **_dilated_branches(n)}),
    ),
    "block_recurrent": (7, _block_recurrent),
    "hierarchical": (8, _hierarchical),
}


def build(
    name: str, *, vocab_size: int, dim: int, seq_len: int, depth: int = 2
) -> nn.Module:
    """Contender ``name`` as a model ids (b n) -> logits (b n v), n <= seq_len."""
    check(name in CONTENDERS, f"unknown contender {name!r}; known: {list(CONTENDERS)}")
    check_positive(vocab_size=vocab_size, dim=dim, seq_len=seq_len, depth=depth)
    check(dim % WIDTH_STEP == 0, f"dim must be a multiple of {WIDTH_STEP}, got {dim}")
    return CONTENDERS[name][1](vocab_size, dim, depth, seq_len)


def width_for(
    name: str,
    *,
    params: int,
    vocab_size: int,
    seq_len: int,
    depth: int = 2,
    widths: range = range(WIDTH_STEP, 1025, WIDTH_STEP),
) -> int:
    """The width whose model has the parameter count closest to ``params``
    (among the ``widths`` the contender accepts: H3 needs multiples of 8)."""
    check_positive(params=params)
    best, best_gap = None, math.inf
    for dim in widths:
        try:
            model = build(
                name, vocab_size=vocab_size, dim=dim, seq_len=seq_len, depth=depth
            )
        except ValueError:
            continue  # e.g. heads that do not divide this width
        size = count_parameters(model)
        if abs(size - params) < best_gap:
            best, best_gap = dim, abs(size - params)
        if size > params:
            break  # sizes grow with the width
    check(best is not None, f"no width in {widths} builds {name!r}")
    return best


@dataclass(frozen=True)
class Task:
    """What a contender trains on and how it is scored.

    ``metric`` is "accuracy" (of the targets that are not -100) or "bits" (per
    byte); ``seq_len`` is the longest input the task feeds a model.
    """

    name: str
    train: Data
    val: tuple[Tensor, Tensor] | Data
    vocab_size: int
    seq_len: int
    metric: str


def recall_task(seq_len: int, vocab_size: int = 16, *, examples: int = 4000) -> Task:
    """Associative recall: multi-query in training, the last key in validation."""
    return Task(
        f"recall n={seq_len}",
        data.associative_recall(examples, seq_len, vocab_size, multi_query=True),
        data.associative_recall(256, seq_len, vocab_size, seed=1),
        vocab_size,
        seq_len,
        "accuracy",
    )


def induction_task(seq_len: int, vocab_size: int = 16, *, examples: int = 4000) -> Task:
    return Task(
        f"induction n={seq_len}",
        data.induction_heads(examples, seq_len, vocab_size),
        data.induction_heads(256, seq_len, vocab_size, seed=1),
        vocab_size,
        seq_len,
        "accuracy",
    )


def bytes_task(corpus: data.ByteCorpus, seq_len: int) -> Task:
    """Next-byte prediction on random windows of a byte corpus."""

    def windows(split: Tensor) -> Data:
        return lambda batch, g: data.random_windows(split, batch, seq_len, g)

    return Task(
        f"bytes n={seq_len}",
        windows(corpus.train),
        windows(corpus.val),
        corpus.vocab_size,
        seq_len,
        "bits",
    )


def run(
    name: str,
    task: Task,
    *,
    params: int,
    config: TrainConfig,
    depth: int = 2,
    device: str | torch.device = "cpu",
) -> dict:
    """Train contender ``name`` of about ``params`` parameters on ``task``.

    Returns a row: contender, task, params, width, the task's score ("accuracy"
    or "bits"), the validation curve and the training seconds.
    """
    dim = width_for(
        name, params=params, vocab_size=task.vocab_size, seq_len=task.seq_len,
        depth=depth,
    )  # fmt: skip
    torch.manual_seed(config.seed)
    model = build(
        name, vocab_size=task.vocab_size, dim=dim, seq_len=task.seq_len, depth=depth
    ).to(device)
    history = train(
        model, task.train, task.val, config, description=f"{name}, {task.name}"
    )
    score = history.final_acc if task.metric == "accuracy" else history.final_bits
    return {
        "contender": name,
        "task": task.name,
        "params": count_parameters(model),
        "dim": dim,
        task.metric: score,
        "curve": {
            "step": history.step,
            "val_acc": history.val_acc,
            "val_loss": history.val_loss,
        },  # fmt: skip
        "seconds": history.seconds[-1],
    }


def grid(
    tasks: Sequence[Task],
    *,
    params: int,
    config: TrainConfig,
    names: Sequence[str] | None = None,
    depth: int = 2,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """``run`` every contender (or ``names``) on every task: one row each."""
    names = list(CONTENDERS) if names is None else list(names)
    for name in names:
        check(name in CONTENDERS, f"unknown contender {name!r}")
    return [
        run(name, task, params=params, config=config, depth=depth, device=device)
        for task in tasks
        for name in names
    ]


def table(rows: Sequence[dict]) -> str:
    """Rows of ``run`` as a text table: one line per contender, a column per task."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    names = list(dict.fromkeys(r["contender"] for r in rows))
    score = {
        (r["contender"], r["task"]): r.get("accuracy", r.get("bits")) for r in rows
    }
    params = {r["contender"]: r["params"] for r in rows}
    width = max(12, *(len(t) for t in tasks))
    lines = [f"{'':16s}{'params':>8s}" + "".join(f"{t:>{width + 2}s}" for t in tasks)]
    for name in names:
        cells = "".join(
            f"{score[name, t]:>{width + 2}.3f}"
            if (name, t) in score
            else " " * (width + 2)
            for t in tasks
        )
        lines.append(f"{name:16s}{params[name]:8d}{cells}")
    return "\n".join(lines)


def speed(
    name: str,
    lengths: list[int],
    *,
    dim: int,
    batch_size: int = 1,
    vocab_size: int = 256,
    depth: int = 2,
    warmup: int = 1,
    repeats: int = 3,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """Forward + backward seconds and peak bytes of contender ``name`` per length."""
    rows = []
    for n in lengths:
        torch.manual_seed(0)
        model = build(name, vocab_size=vocab_size, dim=dim, seq_len=n, depth=depth).to(
            device
        )
        ids = torch.randint(0, vocab_size, (batch_size, n), device=device)

        def step(model: nn.Module = model, ids: Tensor = ids) -> None:
            model(ids).float().logsumexp(-1).mean().backward()

        measured = bench.measure(step, device=device, warmup=warmup, repeats=repeats)
        rows.append({"contender": name, "n": n, **measured})
    return rows
