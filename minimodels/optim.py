"""Per-parameter optimizer settings, and the parameter groups built from them.

Some parameters train better at their own learning rate or without weight decay:
the SSM's A, B and Δ (S4, Gu et al., 2022, arXiv:2111.00396: lr 1e-3, no decay),
Hyena's implicit filter MLP. A module declares that with ``set_optim``; the
settings live on the *module*, keyed by parameter name, so they survive what
replaces parameter objects (``copy.deepcopy``, ``.to()``, ``.to_empty()``,
``load_state_dict`` into a freshly built model). ``param_groups`` turns them into
AdamW groups: declared settings first, then decayed matrices and undecayed
vectors (biases, norms), the usual rule.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from minimodels._util import check

__all__ = ["set_optim", "optim_settings", "param_groups"]

_ATTR = "_optim_settings"
_ALL = "*"  # every parameter of the module and of its children


def set_optim(
    module: nn.Module,
    names: list[str] | None = None,
    *,
    lr: float | None = None,
    weight_decay: float = 0.0,
) -> None:
    """Train ``module``'s parameters ``names`` (default: all of its parameters,
    children included) at ``lr`` (default: the trainer's) and ``weight_decay``."""
    check(lr is None or (math.isfinite(lr) and lr > 0), f"lr must be > 0, got {lr}")
    check(
        math.isfinite(weight_decay) and weight_decay >= 0,
        f"weight_decay must be >= 0, got {weight_decay}",
    )
    settings: dict[str, Any] = {"weight_decay": weight_decay}
    if lr is not None:
        settings["lr"] = lr
    table = module.__dict__.setdefault(_ATTR, {})
    for name in names or [_ALL]:
        if name != _ALL:
            check(
                name in dict(module.named_parameters(recurse=False)),
                f"{type(module).__name__} has no parameter {name!r}",
            )
        table[name] = dict(settings)


def optim_settings(model: nn.Module) -> dict[int, dict[str, Any]]:
    """id(parameter) -> its declared settings; a child's declaration overrides
    its parent's."""
    found: dict[int, dict[str, Any]] = {}
    for module in model.modules():  # parents before children
        for name, settings in getattr(module, _ATTR, {}).items():
            params = (
                module.parameters() if name == _ALL else [module.get_parameter(name)]
            )
            for p in params:
                found[id(p)] = settings
    return found


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: declared settings, decayed matrices, the rest."""
    declared = optim_settings(model)
    special: dict[tuple, list[nn.Parameter]] = {}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        settings = declared.get(id(p))
        if settings is not None:
            special.setdefault(tuple(sorted(settings.items())), []).append(p)
        else:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups += [{"params": ps, **dict(opts)} for opts, ps in special.items()]
    return [g for g in groups if g["params"]]
