"""`make lint` type-checks the package with the pinned mypy, as the pre-commit hook
(which runs `make lint`) does; the linters are pinned exactly, so a new release
cannot fail the lint of a fresh clone."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _lint_recipe() -> list[str]:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in recipe.splitlines()[1:]]


def test_make_lint_runs_ruff_then_mypy_on_the_package():
    assert _lint_recipe() == [
        "$(BIN)/ruff check .",
        "$(BIN)/ruff format --check .",
        "$(BIN)/mypy minimodels",
    ]


def test_the_linters_are_pinned_exactly_and_mypy_checks_the_package():
    if sys.version_info < (3, 11):
        pytest.importorskip("tomli")
        import tomli as tomllib
    else:
        import tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dev = config["project"]["optional-dependencies"]["dev"]
    for tool in ("ruff", "mypy"):
        (pin,) = [d for d in dev if re.match(rf"{tool}\b", d)]
        assert re.fullmatch(rf"{tool}==\d+(\.\d+)+", pin), pin
    assert config["tool"]["mypy"]["files"] == ["minimodels"]
