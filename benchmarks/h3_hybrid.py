"""Chapter 3's H3 hybrid language model: attention, H3, and H3 with two attention
layers, at equal parameter count, on bytes.

    python -m benchmarks.h3_hybrid              # the committed grid (~13 CPU-min)
    python -m benchmarks.h3_hybrid --steps 2    # a toy grid for the tests

The H3 paper's headline language model (Fu et al., 2023, arXiv:2212.14052) is a
GPT-style stack of H3 layers in which two layers are attention. The authors'
released checkpoints put them at a third and two thirds of the depth
(``--attn-layer-idx 8 16`` for 24 layers, ``10 21`` for 32, in HazyResearch/H3's
``examples/README.md``; the 125M one has a single attention layer, 6 of 12);
at depth 6 that is layers 2 and 4 (0-based). Every
cell trains one ``minimodels.lm.LM`` of depth 6 (MLP 4x) whose mixers are the
*contender*'s:

- ``attention``: 6 x ``MultiHeadAttention`` (4 heads of 12, rotary), width 48;
- ``h3``: 6 x ``H3`` (head dimension 1 and state 16: the paper's head
  dimension, a smaller state than its 64 to fit the CPU budget);
- ``hybrid``: H3 with attention at layers 2 and 4.

The H3 models' widths are chosen so that every model has the attention model's
parameter count within 2% (``width``). The data, schedule and scoring are
``benchmarks.monarch.score``'s: 128-byte windows of the stdlib corpus (here 200
steps of 8 windows, so that one cell re-runs within a chapter), bits per byte on
4,096 validation bytes (to pick the learning rate) and 4,096 separate test
bytes. Rows and provenance go to
``figures/data/h3_hybrid.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import torch

from benchmarks.monarch import grid, score
from minimodels._util import check
from minimodels.lm import LM, MixerFactory, count_parameters, mixer_factory

CONTENDERS = ("attention", "h3", "hybrid")
DEPTH, ATTENTION_WIDTH, ATTENTION_LAYERS = 6, 48, (2, 4)
STEPS, BATCH = 200, 8
CELL_NAMES = ("contender", "seed", "lr", "steps")


def mixers(name: str) -> list[MixerFactory]:
    """The per-layer mixers of contender ``name``."""
    check(name in CONTENDERS, f"unknown contender {name!r}; known: {CONTENDERS}")
    attention = mixer_factory("attention", heads=4, dim_head=12)
    h3 = mixer_factory("h3", d_state=16, head_dim=1)
    if name == "attention":
        return [attention] * DEPTH
    if name == "h3":
        return [h3] * DEPTH
    return [attention if i in ATTENTION_LAYERS else h3 for i in range(DEPTH)]


@cache
def width(name: str) -> int:
    """The width that brings ``name`` closest to the attention model's count."""
    target = count_parameters(LM(256, ATTENTION_WIDTH, DEPTH, mixers("attention")))
    if name == "attention":
        return ATTENTION_WIDTH
    return min(
        range(32, 97),
        key=lambda d: abs(count_parameters(LM(256, d, DEPTH, mixers(name))) - target),
    )


def build(name: str, seed: int) -> LM:
    """One contender, initialised from ``seed``."""
    torch.manual_seed(seed)
    return LM(256, width(name), DEPTH, mixers(name))


def run_cell(cell: dict[str, Any]) -> dict[str, float]:
    """Train one (contender, seed, lr) cell; bits per byte on val and test."""
    return {
        **score(build(cell["contender"], cell["seed"]), cell),
        "width": width(cell["contender"]),
    }


BENCHMARK = grid("h3_hybrid", CONTENDERS, [3e-3, 1e-2, 3e-2], STEPS)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    return BENCHMARK.main(argv)


if __name__ == "__main__":
    main()
