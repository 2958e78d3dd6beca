"""Timing and peak-memory helpers for CPU and CUDA, and the benchmark harness.

Chapters plot the plain dicts these helpers return; benchmarks save them as
JSON together with ``environment()`` (the command, commit, device, versions and
date) so a figure always says where its numbers come from.

- ``time_interleaved`` times several functions in turns, round after round, so
  a busy spell on a shared machine slows all of them alike;
- ``fwd_bwd`` is the one forward-and-backward closure that benchmarks time;
- ``Benchmark`` is every ``python -m benchmarks.NAME`` command line: the common
  options (``--device``, ``--threads``, ``--out``, ``--toy``), the output name
  tagged by ``device_tag``, the JSON with provenance and an optional plot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import shlex
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, TypeVar

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from typing_extensions import Unpack  # typing.Unpack from Python 3.11

from minimodels import experiments
from minimodels._util import check, check_positive

__all__ = [
    "environment",
    "device_tag",
    "time_fn",
    "time_interleaved",
    "time_interleaved_or_oom",
    "fwd_bwd",
    "median_or_oom",
    "peak_memory",
    "peak_tensor_bytes",
    "measure",
    "sweep",
    "fit_power_law",
    "save_json",
    "load_json",
    "figures_dir",
    "Benchmark",
    "add_grid_arguments",
    "grid_options",
    "plot_loglog",
]


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
    name = torch.cuda.get_device_name(device).lower()
    known = [t for t in KNOWN_GPUS if re.search(rf"\b{t}\b", name)]
    return known[0] if known else re.sub(r"[^a-z0-9]+", "_", name).strip("_")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeats: int = 5,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Wall-clock seconds of ``fn()``: median and min over ``repeats`` runs."""
    check_positive(repeats=repeats)
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times)}


K = TypeVar("K")  # the functions' names: strings, lengths, ...


def time_interleaved(
    fns: Mapping[K, Callable[[], Any]],
    *,
    rounds: int = 3,
    warmup: int = 1,
    best: bool = True,
    device: str | torch.device = "cpu",
) -> dict[K, float]:
    """Seconds of each function, timed in turns: every round runs each function
    once, so whatever else the machine does slows all of them alike. After
    ``warmup`` calls of each, returns the fastest round of each (``best``) or
    the median. Compare the results as ratios with a margin, never as times."""
    check_positive(rounds=rounds)
    device = torch.device(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[K, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    reduce = min if best else statistics.median
    return {name: reduce(ts) for name, ts in times.items()}


class Timing(TypedDict, total=False):
    """``time_interleaved``'s options, as keywords."""

    rounds: int
    warmup: int
    best: bool
    device: str | torch.device


def time_interleaved_or_oom(
    fns: Mapping[K, Callable[[], Any]], **timing: Unpack[Timing]
) -> dict[K, float | None]:
    """``time_interleaved``, where a function that runs out of device memory
    gets None (a row that does not fit is a result, not a crash): after an
    out-of-memory error the functions are timed one by one."""

    def timed(some: Mapping[K, Callable[[], Any]]) -> dict[K, float | None]:
        return dict(time_interleaved(some, **timing))

    try:
        return timed(fns)
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    out: dict[K, float | None] = {}
    for name, fn in fns.items():
        try:
            out.update(timed({name: fn}))
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            out[name] = None
    return out


def fwd_bwd(
    module: Callable[..., Tensor],
    *inputs: Tensor,
    autocast: torch.dtype | None = None,
) -> Callable[[], None]:
    """A closure running ``module(*inputs)`` forward and backward once.

    The output's gradient is a fixed random tensor (drawn at the first call,
    seeded), so every output element takes part, as in training. Gradients are
    cleared before each call; floating inputs get their own gradients too
    (integer ones, token ids, take none). ``autocast`` runs the forward under
    ``torch.autocast`` in that dtype."""
    check(len(inputs) > 0, "fwd_bwd needs at least one input")
    leaves = [x.detach().requires_grad_() if x.is_floating_point() else x
              for x in inputs]  # fmt: skip
    grad: list[Tensor] = []

    def run() -> None:
        if isinstance(module, nn.Module):
            module.zero_grad(set_to_none=True)
        for x in leaves:
            x.grad = None
        device = leaves[0].device.type
        ctx = (
            torch.autocast(device, dtype=autocast)
            if autocast is not None
            else contextlib.nullcontext()
        )
        with ctx:
            y = module(*leaves)
        if not grad:
            g = torch.Generator(device="cpu").manual_seed(0)
            grad.append(torch.randn(y.shape, generator=g).to(y.device, y.dtype))
        y.backward(grad[0])

    return run


def median_or_oom(
    fn: Callable[[], Any], *, device: str | torch.device = "cpu", repeats: int = 5
) -> float | None:
    """Median seconds of ``fn()``, or None when the device runs out of memory (a
    long-sequence benchmark row that does not fit is a result, not a crash)."""
    device = torch.device(device)
    try:
        return time_fn(fn, warmup=1, repeats=repeats, device=device)["median_s"]
    except torch.OutOfMemoryError:
        return None
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def peak_memory(fn: Callable[[], Any], *, device: str | torch.device = "cpu") -> int:
    """Peak bytes used while ``fn()`` runs, above what was in use before.

    On CUDA this is the caching allocator's high-water mark. On CPU it is
    ``peak_tensor_bytes(fn)``: the tensors alive at once, counted operator by
    operator. (The process's resident memory would be blurred by the allocator
    and by whatever else the machine is doing.)
    """
    device = torch.device(device)
    if device.type != "cuda":
        return peak_tensor_bytes(fn)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


class _TensorBytes(TorchDispatchMode):
    """Counts the bytes of tensors that operators create and that are alive."""

    def __init__(self) -> None:
        super().__init__()
        self.now = self.peak = 0
        self.live: set[int] = set()

    def _free(self, ptr: int, size: int) -> None:
        self.live.discard(ptr)
        self.now -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, Tensor)
        }
        for t in tree_leaves(out):
            if not isinstance(t, Tensor):
                continue
            storage = t.untyped_storage()
            ptr, size = storage.data_ptr(), storage.nbytes()
            # views and in-place results share an input's storage: nothing new
            if size and ptr not in self.live and ptr not in inputs:
                self.live.add(ptr)
                self.now += size
                self.peak = max(self.peak, self.now)
                weakref.finalize(t, self._free, ptr, size)
        return out


def peak_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes of the tensors created by ``fn()`` and alive at the same time.

    Counted operator by operator (a ``TorchDispatchMode``), so it is exact and
    repeatable on any device. What a fused kernel allocates inside itself and
    frees before it returns (a workspace) is not a tensor and is not counted.
    """
    mode = _TensorBytes()
    with mode:
        fn()
    return mode.peak


def measure(
    fn: Callable[[], Any],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 1,
    repeats: int = 5,
    memory: bool = True,
) -> dict[str, float]:
    """Time and (optionally) peak memory of ``fn()`` in one dict."""
    result: dict[str, float] = time_fn(
        fn, warmup=warmup, repeats=repeats, device=device
    )
    if memory:
        result["peak_bytes"] = peak_memory(fn, device=device)
    return result


def sweep(
    make_fn: Callable[[int], Callable[[], Any]],
    sizes: Iterable[int],
    *,
    progress: bool = True,
    description: str = "sweep",
    **measure_options: Any,
) -> list[dict[str, float]]:
    """``measure(make_fn(n))`` for each size n; each row also holds ``n``."""
    from tqdm import tqdm

    rows = []
    for n in tqdm(list(sizes), desc=description, disable=not progress):
        rows.append({"n": n, **measure(make_fn(n), **measure_options)})
    return rows


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
