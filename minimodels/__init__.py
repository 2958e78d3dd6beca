"""minimodels: long-context sequence models, small enough to read.

The library behind the minimodels textbook. Each chapter builds one module, named
by its ``module`` entry in book.toml (``python -m minimodels list`` prints the
map): ``attention`` (the one attention core), ``conv`` (long convolutions),
``ssm`` (S4D), ``h3``, ``hyena``, ``flash`` (the FlashAttention ladder in
PyTorch), ``dilated`` (LongNet; its whole model in ``longnet``),
``block_recurrent``, ``hierarchical`` (on ``hourglass``) and ``bakeoff`` (all of
them at equal size on the same tasks). What they share: ``lm`` (the one model
shell), ``data``, ``optim``, ``train``, ``bench`` and ``measure``,
``experiments``, ``testing``; ``kernels``, the Triton kernels (they need
triton); ``manifest``, the reader of book.toml.

The book's models are named in one table, ``minimodels.registry``; their
classes are reachable from the top level (``minimodels.H3``), each imported on
first use, so ``import minimodels`` stays cheap, loads no data, prints nothing,
sets no seed and does not need triton.
"""

from __future__ import annotations

import importlib
from typing import Any

from minimodels import attention, bench, data, lm, registry, train
from minimodels.attention import MultiHeadAttention, attention_naive, attention_sdpa
from minimodels.conv import fft_conv
from minimodels.lm import LM, mixer_factory
from minimodels.train import TrainConfig

__version__ = "0.1.0"

# the book's models' classes (minimodels.registry) -> their chapter module,
# imported on first access (attention's is imported above)
_LAZY = {n: m for n, m in registry.top_level().items() if n not in globals()}

__all__ = [
    "attention",
    "bench",
    "data",
    "lm",
    "registry",
    "train",
    "LM",
    "MultiHeadAttention",
    "TrainConfig",
    "attention_naive",
    "attention_sdpa",
    "fft_conv",
    "mixer_factory",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'minimodels' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
