"""The benchmark harness: provenance, output files, command lines and plots.

Chapters plot the plain dicts that ``minimodels.measure`` returns (re-exported
here: ``bench.time_interleaved``, ``bench.fwd_bwd``, ``bench.peak_memory``, ...);
benchmarks save them as JSON together with ``environment()`` (the command,
commit, device, versions and date) so a figure always says where its numbers
come from.

- ``Benchmark`` is every ``python -m benchmarks.NAME`` command line: the common
  options (``--device``, ``--threads``, ``--out``, ``--toy``), the output name
  tagged by ``device_tag``, the JSON with provenance and an optional plot;
- ``gpu_result(name)`` finds the committed GPU measurement of a benchmark,
  whichever GPU it was measured on (``NAME_h100.json``, ``NAME_h200.json``, ...).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minimodels import experiments
from minimodels import measure as _measure
from minimodels._util import check, check_positive
from minimodels.measure import *  # noqa: F403  (re-exported: bench.time_fn, ...)

__all__ = [
    "environment",
    "device_tag",
    "fit_power_law",
    "save_json",
    "load_json",
    "figures_dir",
    "gpu_result",
    "Benchmark",
    "add_grid_arguments",
    "grid_options",
    "plot_loglog",
]
__all__ += _measure.__all__


def environment(
    device: str | torch.device = "cpu", *, command: str | None = None
) -> dict[str, Any]:
    """Where a measurement was taken: ``experiments.provenance(command)`` (the
    command, commit, versions, CPU, threads, date) and the device."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    env = experiments.provenance(command)
    env["device"] = torch.cuda.get_device_name(device) if cuda else env["cpu"]
    env["device_type"] = device.type
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if cuda:
        env["cuda"] = torch.version.cuda
    return env


KNOWN_GPUS = ("h200", "h100", "a100", "a10g", "l40s", "l4", "v100", "t4")


def device_tag(device: str | torch.device = "cpu") -> str:
    """The short name that ends every benchmark's output file: ``"cpu"``, a
    known GPU's model (``"h100"``, ``"h200"``, ``"a100"``, ...) or else the GPU's
    name from ``torch.cuda.get_device_name`` in lower case, non-alphanumerics
    as ``_`` (``"nvidia_geforce_rtx_4090"``). Never a guess: a file named
    ``_h100`` was measured on an H100."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    return _gpu_tag(torch.cuda.get_device_name(device))


def _gpu_tag(name: str) -> str:
    """``device_tag`` of the GPU called ``name`` ("NVIDIA H200" -> "h200")."""
    name = name.lower()
    known = [t for t in KNOWN_GPUS if re.search(rf"\b{t}\b", name)]
    return known[0] if known else re.sub(r"[^a-z0-9]+", "_", name).strip("_")


def fit_power_law(xs: Iterable[float], ys: Iterable[float]) -> tuple[float, float]:
    """Least-squares fit of log y = a log x + log c; returns (exponent a, c)."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    check(len(lx) == len(ly) >= 2, "need at least two matching points to fit")
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    a = sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / sum(
        (x - mx) ** 2 for x in lx
    )
    return a, math.exp(my - a * mx)


def save_json(
    data: Any,
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    command: str | None = None,
) -> Path:
    """Write ``{"environment": environment(device, command=...), "results":
    data}`` as indented JSON (``experiments.write_json``: rank 0 alone under
    ``torchrun``, never half a file)."""
    payload = {"environment": environment(device, command=command), "results": data}
    return experiments.write_json(path, payload, indent=2)


def load_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def figures_dir(start: str | Path | None = None) -> Path:
    """The repository's ``figures/`` folder, found by walking up from ``start``
    (default: the working directory) to the folder holding ``book.toml``.

    Chapters run from ``chapters/`` (book build) or ``notebooks/`` (nbval); both
    find the same folder. Outside a checkout this is ``./figures``.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "book.toml").exists():
            return folder / "figures"
    return here / "figures"


def gpu_result(
    name: str, *, folder: str | Path | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The committed GPU measurement ``NAME_<tag>.json`` of a benchmark, for any
    GPU (``h100``, ``h200``, ``a100``, ...), as ``(path, data)``; None if there
    is none. ``folder`` defaults to ``figures_dir() / "data"``.

    A file counts when its recorded device (``"environment"``, or a grid's
    ``"provenance"``) is a CUDA device whose ``device_tag`` is the file's tag,
    so ``hyena_vs_attention_h100.json`` is never taken for a GPU run of
    ``hyena``. If several GPUs' files exist, the newest by recorded date.
    The device's name is ``data["environment"]["device"]`` ("NVIDIA H200").
    """
    folder = Path(folder) if folder is not None else figures_dir() / "data"
    found = []
    for path in folder.glob(f"{name}_*.json"):
        data = load_json(path)
        env = data.get("environment") or data.get("provenance") or {}
        device = env.get("device")
        if env.get("device_type") != "cuda" or not isinstance(device, str):
            continue
        if path.stem == f"{name}_{_gpu_tag(device)}":
            found.append((str(env.get("date", "")), path, data))
    if not found:
        return None
    _, path, data = max(found, key=lambda f: (f[0], f[1].name))
    return path, data


# --- the benchmark harness ----------------------------------------------------------

Arguments = Callable[[argparse.ArgumentParser], object]  # adds options


@dataclass(frozen=True)
class Benchmark:
    """One ``python -m benchmarks.NAME`` command line around ``run(args)``.

    Every benchmark gets the same options: ``--threads`` (default 1: on a
    shared machine more threads cost more CPU than they save), ``--out`` (a
    JSON path; default ``figures/data/`` + ``out`` with ``{tag}`` replaced by
    ``device_tag(args.device)``; ``_build/toy/`` for a toy run), ``--toy``
    (the arguments ``toy`` first, so the run takes seconds; explicit arguments
    still win), ``--device`` (unless ``device`` is None: a CPU-only grid;
    ``"auto"``: the GPU if there is one), ``--processes`` for a grid and
    ``--plot PATH`` when there is a ``plot``. ``add_arguments`` adds the rest.

    ``main(argv)`` parses, sets the threads and calls ``run(args)``. What
    happens next depends on the kind:

    - a timing benchmark: ``run`` returns its results, saved with
      ``save_json``, provenance included (``args.command`` is the command
      line);
    - a grid of training runs (``cell``, a module-level ``cell -> metrics``):
      ``run`` returns the cells, and ``experiments.run_grid`` trains them and
      writes the rows, which ``main`` returns;
    - ``grid=True``: ``run`` calls ``experiments.run_grid`` itself (several
      phases, say), given ``grid_options(args)``.

    Then ``report(result)``, if given, is printed and ``plot`` draws.
    """

    name: str  # the module in benchmarks/
    doc: str | None  # the --help text: the module's docstring
    run: Callable[[argparse.Namespace], Any]
    out: str | Callable[[argparse.Namespace], str]  # file name, "{tag}" allowed
    add_arguments: Arguments | None = None
    toy: Sequence[str] = ()
    grid: bool = False
    device: str | None = "cpu"  # the default --device; "auto": cuda if available
    plot: Callable[[Any, Path], None] | None = None
    cell: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None
    report: Callable[[Any], str] | None = None

    @property
    def writes_rows(self) -> bool:
        """Whether ``experiments.run_grid`` writes the file (a grid)."""
        return self.grid or self.cell is not None

    def parser(self) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(
            prog=f"python -m benchmarks.{self.name}",
            description=self.doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if self.device is not None:
            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            p.add_argument("--device", default=device, help="cpu, cuda, ...")
        p.add_argument("--threads", type=int, default=1, help="CPU threads")
        p.add_argument("--out", type=Path, default=None, help="JSON path")
        toy = shlex.join(self.toy) or "the defaults"
        p.add_argument("--toy", action="store_true", help=f"seconds: {toy}")
        if self.writes_rows:
            p.add_argument("--processes", type=int, default=1, help="worker processes")
        if self.plot is not None:
            p.add_argument("--plot", type=Path, default=None, help="save a figure")
        if self.add_arguments is not None:
            self.add_arguments(p)
        return p

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        given = list(sys.argv[1:] if argv is None else argv)
        parser = self.parser()
        args = parser.parse_args(given)
        if args.toy:  # the toy arguments first: the given ones override them
            args = parser.parse_args([*self.toy, *given])
        if self.device is None:
            args.device = "cpu"
        check_positive(threads=args.threads)
        args.command = shlex.join(["python", "-m", f"benchmarks.{self.name}", *given])
        if args.out is None:  # a toy run never writes over the book's data
            name = self.out if isinstance(self.out, str) else self.out(args)
            name = name.format(tag=device_tag(args.device))
            folder = ("_build", "toy") if args.toy else ("figures", "data")
            args.out = figures_dir().parent.joinpath(*folder, name)
        return args

    def main(self, argv: Sequence[str] | None = None) -> Any:
        """Parse ``argv`` (default: the command line) and ``call`` the result."""
        return self.call(self.parse(argv))

    def call(self, args: argparse.Namespace) -> Any:
        """Run at ``args.threads`` threads (the caller's count is restored
        after), train the cells of a grid, save, report and plot; returns the
        results (a grid's rows)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            result = self.run(args)
            if self.cell is not None:
                result = experiments.run_grid(
                    self.cell, result, description=self.name, **grid_options(args)
                )
            elif not self.grid:  # the provenance records the threads of the run
                save_json(result, args.out, device=args.device, command=args.command)
        finally:
            torch.set_num_threads(threads)
        if self.report is not None:
            print(self.report(result))
        print(f"wrote {args.out}")
        if self.plot is not None and args.plot is not None:
            self.plot(result, args.plot)
        return result


def add_grid_arguments(
    p: argparse.ArgumentParser,
    *,
    contenders: Sequence[str],
    lrs: Sequence[float] | None,
    seeds: Sequence[int],
    tasks: Sequence[str] | None = None,
    default_contenders: Sequence[str] | None = None,
    default_tasks: Sequence[str] | None = None,
) -> None:
    """The options of a grid of training runs: its axes ``--contenders``,
    ``--lrs`` (None: each task's own), ``--seeds`` and, given ``tasks``,
    ``--tasks``; and its size, ``--scale`` (times the full step count) and
    ``--questions`` (validation and test questions, each)."""
    if tasks is not None:
        p.add_argument("--tasks", nargs="+", choices=list(tasks),
                       default=list(default_tasks or tasks))  # fmt: skip
    p.add_argument("--contenders", nargs="+", choices=list(contenders),
                   default=list(default_contenders or contenders))  # fmt: skip
    p.add_argument("--lrs", type=float, nargs="+",
                   default=None if lrs is None else list(lrs))  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    p.add_argument("--scale", type=float, default=1.0, help="x the full steps")
    p.add_argument("--questions", type=int, default=1000,
                   help="validation and test questions, each")  # fmt: skip


def grid_options(args: argparse.Namespace) -> dict[str, Any]:
    """What a grid benchmark passes on to ``experiments.run_grid``: its output,
    processes, threads per process and command line."""
    return {"out": args.out, "processes": args.processes, "threads": args.threads,
            "command": args.command}  # fmt: skip


def plot_loglog(
    series: Mapping[str, Sequence[tuple[float, float | None]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
) -> Path:
    """Save a log-log figure of named ``(x, y)`` series (points whose y is None,
    e.g. out of memory, are left out) to ``path``. A bare ``Figure``: no
    display, and pyplot's backend (a notebook's) is left alone."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, points in series.items():
        kept = [(x, y) for x, y in points if y is not None]
        if kept:
            ax.loglog(*zip(*kept), "o-", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    fig.savefig(path, bbox_inches="tight")
    return Path(path)
