"""The book's models by name: the one registry, on the library's top floor.

Each chapter module defines a model: a sequence *mixer* that ``minimodels.lm.LM``
stacks ((b n c) -> (b n c), built as ``cls(dim, **options)``), or a whole
*model* (ids (b n) -> logits). ``MODELS`` names each one and the chapter module
that defines it, as book.toml's ``module`` entries do; its chapter number is
looked up in the manifest by that module (``Model.chapter``), never written
here. The same table serves

- ``LM(mixer="h3")`` and ``lm.mixer_factory("h3", ...)`` (``mixer_factory``),
- the bake-off's contenders (``minimodels.bakeoff.CONTENDERS``: one per model),
- the CLI (``python -m minimodels list`` / ``run NAME``),
- the top-level names ``minimodels.H3`` etc. (``top_level``), imported on first use.

The floors, lowest first: ``_util`` and ``manifest``; the primitives (``conv``,
``data``, ``optim``, ``attention``, ``lm``, ``train``); the chapter modules;
this registry, ``bakeoff`` and the CLI. A floor imports only from below: the
registry imports a chapter module when one of its models is first asked for,
and ``lm``, which every chapter module imports, reaches up to the registry only
inside ``mixer_factory``, at call time (an import at its top would be a cycle).
Importing this module imports no chapter module and reads no file.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from minimodels import manifest
from minimodels._util import check

__all__ = ["Model", "MODELS", "get", "mixer_factory", "top_level"]


@functools.cache
def _book() -> manifest.Book:
    return manifest.load()


@dataclass(frozen=True)
class Model:
    """One of the book's models."""

    name: str  # for LM(mixer=...), the bake-off and the CLI
    module: str  # the chapter module that defines it (book.toml's ``module``)
    cls: str  # the class, an attribute of ``module``
    mixer: bool  # True: an LM mixer cls(dim, **options); False: a whole model
    exports: tuple[str, ...] = ()  # more names of ``module`` for minimodels.NAME

    @property
    def chapter(self) -> int:
        """The number of the chapter that builds it, from the manifest."""
        number = _book().chapter_of(self.module)
        if number is None:
            raise ValueError(f"book.toml has no chapter on {self.module}")
        return number

    def load(self) -> Callable[..., nn.Module]:
        """The class, importing its chapter module."""
        return getattr(importlib.import_module(self.module), self.cls)


MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model("attention", "minimodels.attention", "MultiHeadAttention", mixer=True),
        Model("s4d", "minimodels.ssm", "S4DMixer", mixer=True, exports=("S4D",)),
        Model("h3", "minimodels.h3", "H3", mixer=True),
        Model(
            "hyena", "minimodels.hyena", "HyenaOperator", mixer=True,
            exports=("HyenaConfig",),
        ),
        Model(
            "dilated", "minimodels.dilated", "DilatedAttention", mixer=True,
            exports=("LongNetTransformer",),
        ),
        Model(
            "block_recurrent", "minimodels.block_recurrent",
            "BlockRecurrentTransformer", mixer=False,
            exports=("RecurrentTrainWrapper", "RecurrentTrainerWrapper"),
        ),
        Model(
            "hierarchical", "minimodels.hierarchical", "HierarchicalTransformer",
            mixer=False, exports=("Hourglass",),
        ),
    )
}  # fmt: skip


def get(name: str) -> Model:
    """The model called ``name``; an unknown name is an error listing the known."""
    check(name in MODELS, f"unknown model {name!r}; known: {list(MODELS)}")
    return MODELS[name]


def mixer_factory(name: str, **options: Any) -> Callable[[int], nn.Module]:
    """The mixer ``name`` as a factory ``dim -> module``; ``options`` go to its
    constructor, which rejects any it does not know (a misspelt option is an
    error, never silently swallowed)."""
    mixers = [m.name for m in MODELS.values() if m.mixer]
    check(
        name not in MODELS or name in mixers,
        f"{name!r} is a whole model, not a mixer for LM; the mixers: {mixers}",
    )
    check(name in mixers, f"unknown mixer {name!r}; known: {mixers}")
    return partial(MODELS[name].load(), **options)


def top_level() -> dict[str, str]:
    """The names ``minimodels.NAME`` imports on first use -> their module."""
    return {attr: m.module for m in MODELS.values() for attr in (m.cls, *m.exports)}
