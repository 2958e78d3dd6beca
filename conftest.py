"""pytest plugin for the chapter notebooks (collected by nbval from notebooks/).

nbval executes every chapter and its asserts are the checks. So that the book build
need not execute every chapter a second time, a chapter whose cells all passed is
stored, with the outputs nbval saw, in the Jupyter Book execution cache
(``_build/.jupyter_cache``); the build then finds it there. The notebook stored is
read from the chapter's MyST file by myst-nb's own reader, so its hash is the one
the build computes. Each chapter's time is reported against its CPU budget in
book.toml, in a table at the end of the run; the budgets fail the run only when
``MINIMODELS_ENFORCE_BUDGETS=1`` (``make budget``, meant for an idle machine: on a
busy one the same chapter takes two or three times as long).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("MINIMODELS_JUPYTER_CACHE", ROOT / "_build/.jupyter_cache"))
TIMES = ROOT / "_build" / "chapter_times.txt"
# under pytest-xdist (chapters run two at a time on 2 cores) the workers execute
# and cache the chapters; the controller, which sees every report, writes the table
WORKER = "PYTEST_XDIST_WORKER" in os.environ

_failed: set[str] = set()
_seconds: dict[str, float] = defaultdict(float)
_cells: dict[str, list] = defaultdict(list)
_seen: set[str] = set()  # the cells this process ran (an xdist worker runs some)


def _chapter(item: pytest.Item) -> str | None:
    path = Path(str(item.path))
    return path.stem if path.suffix == ".ipynb" else None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::")[0]
    _seen.add(report.nodeid)
    if report.failed:
        _failed.add(path)
    if path.endswith(".ipynb") and report.when == "call":
        _seconds[Path(path).stem] += report.duration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if (stem := _chapter(item)) is not None:
            _cells[stem].append(item)


def _budgets() -> dict[str, float]:
    from minimodels import manifest

    return {c.stem: c.cpu_budget_s for c in manifest.load(ROOT).chapters}


def _cache_chapter(stem: str, items: list) -> None:
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn
    from myst_nb.core.read import read_myst_markdown_notebook

    source = ROOT / "chapters" / f"{stem}.md"
    nb = read_myst_markdown_notebook(source.read_text(), path=source)
    code = [c for c in nb.cells if c.cell_type == "code"]
    if len(code) != len(items):
        return  # notebook and chapter out of step: the sync test reports it
    for count, (cell, item) in enumerate(zip(code, items), start=1):
        cell.outputs = [nbformat.from_dict(o) for o in (item.test_outputs or [])]
        cell.execution_count = count
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    bundle = CacheBundleIn(nb, str(source), data={"source": "nbval"})
    get_cache(str(CACHE)).cache_notebook_bundle(
        bundle, check_validity=False, overwrite=True
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for stem, items in _cells.items():
        nodeid = items[0].nodeid.split("::")[0]
        # every worker collects every chapter but runs only its own: cache a
        # chapter only where all of its cells ran, and passed
        ran = all(i.nodeid in _seen and hasattr(i, "test_outputs") for i in items)
        if ran and nodeid not in _failed:
            _cache_chapter(stem, items)
    if WORKER or not _seconds:
        return
    budgets = _budgets()
    over = [
        f"{stem}: {seconds:.0f} s > budget {budgets[stem]} s"
        for stem, seconds in _seconds.items()
        if stem in budgets and seconds > budgets[stem]
    ]
    enforce = os.environ.get("MINIMODELS_ENFORCE_BUDGETS") == "1"
    lines = [f"{'chapter':40s} {'seconds':>8s}  budget"]
    lines += [
        f"{stem:40s} {_seconds[stem]:8.1f}  {budgets.get(stem, '?')}"
        for stem in sorted(_seconds)
    ]
    lines += [f"over budget: {line}" for line in over]
    TIMES.parent.mkdir(parents=True, exist_ok=True)
    TIMES.write_text("\n".join(lines) + "\n")  # `make test` prints it at the end
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("-", "chapter times, wall seconds (budget from book.toml)")
        for line in lines:
            reporter.write_line(line)
    if over and enforce and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
