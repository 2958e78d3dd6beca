"""Chapter 0: a 2-layer attention LM on associative recall, by embedding init.

Contenders (the same ``minimodels.lm.LM``, only the embedding init and the head
differ):

- ``he``: the library's default, embedding N(0, 2 / dim) (Kaiming normal, as
  x-transformers' ``TokenEmbedding``) and an untied head (x-transformers'
  ``tie_embedding=False``);
- ``he_tied``: the same init, head tied to the embedding;
- ``gpt2_tied``: embedding N(0, 0.02^2), head tied (GPT-2 and nanoGPT);
- ``gpt2``: embedding N(0, 0.02^2), head untied.

The model is attention-only (``mlp_mult=0``: two blocks of 4-head attention at
width 64), the smallest model with an induction circuit (Olsson et al., 2022).
Every cell trains with ``minimodels.train.train`` on fresh multi-query examples
(17 tokens: 8 key-value pairs over 8 keys, then the query; vocabulary 16) and
records the learning curve on 1,000 validation questions (``VAL_SEED``), the
final validation accuracy (which picks the learning rate), the accuracy on 1,000
separate test questions (``TEST_SEED``, which reports), the first evaluation
step at >= 0.95, and the induction-circuit measurements of ``induction_scores``
on the test questions.

    python -m benchmarks.ch00_recall         # -> figures/data/ch00_recall.json
    python -m benchmarks.ch00_recall --toy   # one cell, into _build/toy/
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from minimodels import bench
from minimodels.attention import MultiHeadAttention
from minimodels.data import associative_recall
from minimodels.lm import LM, mixer_factory
from minimodels.train import History, TrainConfig, evaluate, train

SEQ_LEN, VOCAB = 17, 16  # 8 key-value pairs over 8 keys, then the query
MLP_MULT = 0  # attention only
QUESTIONS = 1000
VAL_SEED, TEST_SEED = 2**31, 2**31 + 1  # outside the training seeds' [0, 2^30)
CONTENDERS: dict[str, tuple[float | None, bool]] = {  # embedding std, tied head
    "he": (None, False),
    "he_tied": (None, True),
    "gpt2_tied": (0.02, True),
    "gpt2": (0.02, False),
}
CELL_NAMES = (
    "contender", "dim", "heads", "steps", "batch_size", "warmup", "lr", "seed",
)  # fmt: skip
RECIPE = dict(dim=64, heads=4, steps=300, batch_size=64, warmup=30)


def questions(seed: int, n: int = QUESTIONS) -> tuple[Tensor, Tensor]:
    """``n`` single-query recall questions (only the last key is asked)."""
    return associative_recall(n, SEQ_LEN, VOCAB, seed=seed)


def fresh_examples(
    batch_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """A new multi-query batch per step, seeded from the trainer's generator."""
    seed = int(torch.randint(1 << 30, (1,), generator=generator))
    return associative_recall(batch_size, SEQ_LEN, VOCAB, multi_query=True, seed=seed)


def build(contender: str, dim: int, heads: int, seed: int) -> LM:
    """The LM of ``contender`` at width ``dim``, initialised from ``seed``."""
    if contender not in CONTENDERS:
        raise ValueError(f"contender must be one of {sorted(CONTENDERS)}")
    std, tied = CONTENDERS[contender]
    torch.manual_seed(seed)
    mixer = mixer_factory("attention", heads=heads)
    model = LM(
        VOCAB, dim=dim, depth=2, mixer=mixer, mlp_mult=MLP_MULT, tie_weights=tied
    )
    if std is not None:
        nn.init.normal_(model.embed.weight, std=std)  # GPT-2's init
    return model


def train_recall(
    cell: dict[str, Any], *, progress: bool = False, eval_every: int = 25
) -> tuple[LM, History]:
    """Build and train the model of one cell; returns it with its history.

    ``eval_every`` only sets how often the validation curve is drawn (scoring
    does not touch the training batches or weights)."""
    model = build(cell["contender"], cell["dim"], cell["heads"], cell["seed"])
    config = TrainConfig(
        steps=cell["steps"], batch_size=cell["batch_size"], lr=cell["lr"],
        warmup=cell["warmup"], eval_every=eval_every, seed=cell["seed"],
        progress=progress,
    )  # fmt: skip
    history = train(model, fresh_examples, questions(VAL_SEED), config,
                    description=f"{cell['contender']} seed {cell['seed']}")  # fmt: skip
    return model, history


def attention_maps(model: LM, x: Tensor) -> list[Tensor]:
    """Each layer's attention probabilities (b h n n) on ids ``x`` (b n).

    A forward hook catches each mixer's input (the block's normed residual
    stream); softmax(q k^T / sqrt(d)) with the causal mask is then recomputed
    from the mixer's own projections and rotary embedding (``_qkv``).
    """
    inputs: list[Tensor] = []
    mixers = [cast(MultiHeadAttention, b.mixer) for b in model.blocks]
    hooks = [
        m.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
        for m in mixers
    ]
    try:
        with torch.no_grad():
            model(x)
            maps = []
            for mixer, u in zip(mixers, inputs):
                q, k, _ = mixer._qkv(u)
                s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
                n = s.shape[-1]
                future = torch.ones(n, n, dtype=torch.bool).triu(1)
                maps.append(s.masked_fill(future, float("-inf")).softmax(-1))
    finally:
        for h in hooks:
            h.remove()
    return maps


def induction_scores(model: LM, x: Tensor) -> dict[str, Any]:
    """The two heads of the induction circuit, found by measurement.

    Previous-token head: the layer-1 head with the largest mean attention from
    each value position (odd positions 1, 3, ...) to the position just before
    it (its key); ``prev_mass`` is that mean, ``prev_mass_all`` the same mean
    over every position after the first.
    Matching head: the layer-2 head whose attention from the query (the last
    position) peaks most often on a value position whose key equals the query;
    ``match_fraction`` is that fraction of the questions ``x``.
    """
    first, second = attention_maps(model, x)[:2]
    n = x.shape[1]
    prev = first.diagonal(offset=-1, dim1=-2, dim2=-1)  # (b h n-1): P[i, i-1]
    at_values = prev[..., 0::2].mean((0, 2))  # i = 1, 3, ...: value positions
    prev_head = int(at_values.argmax())
    peak = second[:, :, -1].argmax(-1)  # (b h): where the query looks most
    key_before = x.gather(1, (peak - 1).clamp(min=0))  # (b h): token before peak
    hit = (peak % 2 == 1) & (peak < n - 1) & (key_before == x[:, -1:])
    per_head = hit.float().mean(0)
    match_head = int(per_head.argmax())
    return {
        "prev_head": prev_head,
        "prev_mass": at_values[prev_head].item(),
        "prev_mass_all": prev[:, prev_head].mean().item(),
        "match_head": match_head,
        "match_fraction": per_head[match_head].item(),
    }


def score(model: LM, history: History) -> dict[str, Any]:
    """A trained cell's metrics: curve, validation and test accuracy, circuit."""
    test_x, test_y = test = questions(TEST_SEED)
    _, test_acc = evaluate(model, test, batches=None)
    reached = [s for s, a in zip(history.step, history.val_acc) if a >= 0.95]
    return {
        "curve_step": history.step,
        "curve_val_acc": history.val_acc,
        "val_acc": history.final_acc,
        "val_auc": sum(history.val_acc) / len(history.val_acc),  # area under curve
        "test_acc": test_acc,
        "steps_to_95": reached[0] if reached else None,
        **induction_scores(model, test_x),
    }


def run(cell: dict[str, Any]) -> dict[str, Any]:
    """One grid cell: train, then score (the function ``run_grid`` calls)."""
    return score(*train_recall(cell))


# (contender, lr) in the order they run: the comparisons the chapter needs first
PLAN = (
    ("he", 2e-3), ("gpt2_tied", 2e-3), ("he", 1e-3), ("he", 4e-3),
    ("gpt2_tied", 1e-3), ("gpt2_tied", 4e-3), ("gpt2", 2e-3), ("he_tied", 2e-3),
)  # fmt: skip
SEEDS = (0, 1, 2)


def cells(
    plan: Sequence[tuple[str, float]], seeds: Sequence[int], **recipe: Any
) -> list[dict[str, Any]]:
    recipe = {**RECIPE, **recipe}
    return [
        {"contender": c, **recipe, "lr": lr, "seed": s} for c, lr in plan for s in seeds
    ]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS),
                   choices=list(CONTENDERS))  # fmt: skip
    p.add_argument("--lrs", nargs="+", type=float, default=None,
                   help="every contender at these rates (default: PLAN)")  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--steps", type=int, default=RECIPE["steps"])
    p.add_argument("--dim", type=int, default=RECIPE["dim"])


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    plan = [p for p in PLAN if p[0] in args.contenders]
    if args.lrs is not None:
        plan = [(c, lr) for c in args.contenders for lr in args.lrs]
    return cells(plan, args.seeds, steps=args.steps, dim=args.dim)


BENCHMARK = bench.Benchmark(
    "ch00_recall", __doc__, grid, "ch00_recall.json", add_arguments, cell=run,
    toy="--contenders he --lrs 1e-3 --seeds 0 --steps 2 --dim 16".split(), device=None
)  # fmt: skip
main = BENCHMARK.main

if __name__ == "__main__":
    main()
