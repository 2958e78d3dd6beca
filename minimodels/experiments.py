"""Experiments that hold: grids of training runs over seeds and learning rates.

A trained result is evidence only when it survives another seed, another
learning rate and another CPU's rounding. This module runs a *grid*: a list of
cells, each a JSON-able dict of what varies (``{"contender": "h3", "seed": 1,
"lr": 3e-3, ...}``), through a function ``cell -> metrics``, and keeps

- **provenance**: the command, the git commit, torch/python versions, the CPU
  model, the thread count and the date, stored with the rows;
- **resumability**: rows are written to JSON after every finished cell, and a
  cell already in the file is not run again; rows of other cells stay, with
  the provenance of the runs that made them (``"earlier"``);
- **parallelism**: cells run in separate processes (``processes=2`` on the
  book's 2-core machine), each with its own thread count;
- **honest selection**: ``tune`` picks each group's learning rate on a
  validation metric, and ``summarize`` reports a separate test metric as mean,
  min and max over seeds;
- **spot checks**: ``spot_check`` re-runs one stored cell, picked at random per
  call, so a chapter that plots stored numbers also checks one of them live.

The function given to ``run_grid`` must be importable (a module-level function)
so that worker processes can find it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from minimodels._util import check, check_positive

__all__ = [
    "provenance",
    "is_writer",
    "write_json",
    "cpu_model",
    "cell_key",
    "run_grid",
    "load",
    "tune",
    "summarize",
    "summary_lines",
    "spot_check",
]

Cell = dict[str, Any]
Row = dict[str, Any]
CellFn = Callable[[Cell], Mapping[str, Any]]
By = Sequence[str]  # the names whose values make a group of rows
CONTENDER: By = ("contender",)


def cpu_model() -> str:
    """The processor's marketing name (Linux ``/proc/cpuinfo``), else platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True,
        )  # fmt: skip
    except OSError:
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance(command: str | None = None, *, threads: int | None = None) -> dict:
    """Where and how rows were made: command, commit, versions, CPU, date."""
    return {
        "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "commit": _git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def cell_key(cell: Mapping[str, Any]) -> str:
    """A cell's identity: its items as canonical JSON."""
    return json.dumps(cell, sort_keys=True)


def load(path: str | Path) -> dict[str, Any]:
    """A grid file: ``{"provenance": ..., "rows": [...]}``."""
    return json.loads(Path(path).read_text())


def is_writer() -> bool:
    """Whether this process writes results: always, except under ``torchrun``,
    where rank 0 alone writes (the other ranks hold the same rows)."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank())


def write_json(path: str | Path, payload: Any, *, indent: int = 1) -> Path:
    """Write ``payload`` as JSON to ``path`` from the writing process only
    (``is_writer``), through a temporary file: a crash mid-write never leaves
    half a file. Every results file of the book is written here."""
    path = Path(path)
    if not is_writer():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=indent) + "\n")
    os.replace(tmp, path)
    return path


def _earlier(file: Mapping[str, Any]) -> dict[str, list[dict]]:
    """The provenance of the runs that made the rows already in a grid file
    (they stay in it): ``{"earlier": [...]}``, oldest first, or nothing."""
    earlier = list(file.get("earlier", []))
    if file["rows"] and "provenance" in file:
        earlier.append(file["provenance"])
    return {"earlier": earlier} if earlier else {}


def _run_one(fn: CellFn, cell: Cell, threads: int) -> Row:
    torch.set_num_threads(threads)
    metrics = dict(fn(dict(cell)))
    clash = set(metrics) & set(cell)
    check(not clash, f"metrics must not reuse the cell's names: {sorted(clash)}")
    return {**cell, **metrics}


def run_grid(
    fn: CellFn,
    cells: Sequence[Mapping[str, Any]],
    *,
    out: str | Path | None = None,
    processes: int = 1,
    threads: int = 1,
    command: str | None = None,
    description: str = "grid",
    progress: bool = True,
) -> list[Row]:
    """Run ``fn(cell)`` for every cell; rows are ``{**cell, **metrics}``.

    With ``out``, rows already stored there for the same cells are reused (the
    grid resumes) and the file is rewritten after every new row, together with
    ``provenance(command)``: this grid's rows in the order of ``cells``, then
    every stored row of another cell, untouched (a run for a subset of a grid
    never deletes the rest of its data). The provenance of the runs that made
    the stored rows is kept too, under ``"earlier"``, oldest first.
    ``processes > 1`` runs cells in that many worker processes (spawned, each
    at ``threads`` threads). Rows come back in the order of ``cells``.
    """
    check_positive(processes=processes, threads=threads)
    grid: list[Cell] = [dict(c) for c in cells]
    keys = [cell_key(c) for c in grid]
    check(len(set(keys)) == len(keys), "cells must be distinct")
    path = Path(out) if out is not None else None
    file = load(path) if path is not None and path.exists() else {"rows": []}
    stored = file["rows"]
    names = list(grid[0]) if grid else []
    done: dict[str, Row] = {}
    for row in stored:  # the first stored row of a cell is that cell's row
        done.setdefault(cell_key({k: row[k] for k in names if k in row}), row)
    used = {id(done[k]) for k in keys if k in done}
    # rows of other cells (another phase, another subset) stay in the file
    others = [r for r in stored if id(r) not in used]
    stamp = provenance(command, threads=threads)
    header = {"provenance": stamp, **_earlier(file)}
    todo = [c for c, k in zip(grid, keys) if k not in done]
    bar = tqdm(total=len(grid), initial=len(grid) - len(todo), desc=description,
               disable=not progress)  # fmt: skip

    def finished(row: Row) -> None:
        done[cell_key({k: row[k] for k in names})] = row
        if path is not None:
            rows = [done[k] for k in keys if k in done]
            write_json(path, {**header, "rows": rows + others})
        bar.update()

    if processes == 1 or len(todo) <= 1:
        for cell in todo:
            finished(_run_one(fn, cell, threads))
    else:
        ctx = get_context("spawn")
        with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
            futures = [pool.submit(_run_one, fn, cell, threads) for cell in todo]
            for future in as_completed(futures):
                finished(future.result())
    bar.close()
    return [done[k] for k in keys]


def _group(rows: Sequence[Row], by: Sequence[str]) -> dict[tuple, list[Row]]:
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    return groups


def tune(
    rows: Sequence[Row],
    *,
    select: str,
    by: By = CONTENDER,
    knob: str = "lr",
    higher_is_better: bool = True,
) -> list[Row]:
    """Keep, for each group ``by``, the rows at the ``knob`` value (learning
    rate) whose mean ``select`` metric over seeds is best. Select on a
    validation metric, report a separate test metric: the questions that chose
    the learning rate never score the model."""
    kept = []
    for group in _group(rows, by).values():
        per_knob = _group(group, [knob])
        means = {k: statistics.fmean(r[select] for r in g) for k, g in per_knob.items()}
        best = (max if higher_is_better else min)(means, key=means.__getitem__)
        kept += per_knob[best]
    return kept


def summarize(
    rows: Sequence[Row], metric: str, *, by: By = CONTENDER, seed: str = "seed"
) -> list[dict[str, Any]]:
    """Mean, min and max of ``metric`` over seeds for each group ``by``."""
    summary = []
    for values, group in _group(rows, by).items():
        scores = [r[metric] for r in group]
        summary.append({
            **dict(zip(by, values)),
            "mean": statistics.fmean(scores), "min": min(scores), "max": max(scores),
            "seeds": sorted(r[seed] for r in group),
        })  # fmt: skip
    return summary


def summary_lines(
    summary: Sequence[Mapping[str, Any]], by: Sequence[str], *, metric: str = "test"
) -> list[str]:
    """``summarize``'s groups as lines: the group, its ``lr``, the mean (min-max)
    of ``metric`` and the seeds."""
    width = {k: max(len(str(s[k])) for s in summary) for k in by}
    return [
        " ".join(f"{s[k]!s:{width[k]}}" for k in by)
        + f"  lr {s['lr']:.0e}  {metric} {s['mean']:.3f} "
        f"({s['min']:.3f}-{s['max']:.3f}) seeds {s['seeds']}"
        for s in summary
    ]


def spot_check(
    fn: CellFn,
    rows: Sequence[Row],
    cell_names: Sequence[str],
    *,
    rng: random.Random | None = None,
    threads: int = 1,
) -> tuple[Row, Row]:
    """Re-run one stored row, chosen at random (a fresh choice per call unless
    ``rng`` is given), from its cell (the ``cell_names`` of the row); returns
    ``(stored, live)`` for the caller to compare with its tolerance."""
    check(len(rows) > 0, "no rows to spot-check")
    stored = (rng or random.Random()).choice(list(rows))
    cell = {k: stored[k] for k in cell_names}
    return stored, _run_one(fn, cell, threads)
