"""Timing and peak-memory helpers for CPU and CUDA, returning plain dicts.

Chapters plot these dicts; benchmarks save them as JSON together with
``environment()`` (device, versions, date) so a figure always says where its
numbers come from. Scaling exponents are fitted with ``fit_power_law``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import statistics
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from minimodels._util import check, check_positive

__all__ = [
    "environment",
    "time_fn",
    "median_or_oom",
    "peak_memory",
    "peak_tensor_bytes",
    "measure",
    "sweep",
    "fit_power_law",
    "save_json",
    "load_json",
    "figures_dir",
]


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Where a measurement was taken: device name, versions, date."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    env = {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "date": _dt.date.today().isoformat(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
    return env


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
    data: Any, path: str | Path, *, device: str | torch.device = "cpu"
) -> Path:
    """Write ``{"environment": ..., "results": data}`` as indented JSON (from
    rank 0 only, when several processes run under ``torchrun``)."""
    path = Path(path)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment(device), "results": data}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


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
