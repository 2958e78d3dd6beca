"""Small helpers shared by every module: argument checks and tiny conveniences."""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from typing import Any, TypeVar

T = TypeVar("T")


def exists(x: Any) -> bool:
    return x is not None


def default(x: T | None, d: T) -> T:
    return x if x is not None else d


def check(condition: bool, message: str) -> None:
    """Raise a ``ValueError`` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(message)


def check_positive(**values: int | float) -> None:
    """Check that every named value is > 0, naming the first one that is not."""
    for name, value in values.items():
        check(value > 0, f"{name} must be positive, got {value!r}")


def check_int(**values: object) -> None:
    """Each value must be an integer (Python's or numpy's), not a float or a bool;
    names the first that is not."""
    for name, value in values.items():
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        check(ok, f"{name} must be an integer, got {value!r}")


def check_divides(divisor_name: str, divisor: int, name: str, value: int) -> None:
    check(
        divisor > 0 and value % divisor == 0,
        f"{divisor_name} ({divisor}) must divide {name} ({value})",
    )


def check_ndim(name: str, tensor: Any, ndim: int, layout: str) -> None:
    check(
        tensor.ndim == ndim,
        f"{name} must have shape ({layout}), got {tuple(tensor.shape)}",
    )


def config_from(config: type[T], owner: str, options: dict[str, Any]) -> T:
    """``config(**options)``, a dataclass listing every option of ``owner`` once
    (with its default); an option it does not have is an error naming it (and
    the nearest real one), never swallowed."""
    known = [f.name for f in dataclasses.fields(config)]  # type: ignore[arg-type]
    for name in options:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise TypeError(
                f"{owner} got an unknown option {name!r}{hint}; its options are "
                f"the fields of {config.__name__}: {', '.join(known)}"
            )
    return config(**options)
