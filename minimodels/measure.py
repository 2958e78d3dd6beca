"""Measuring one function: its seconds and its peak bytes, on CPU or CUDA.

The measurements ``minimodels.bench``'s benchmarks are made of (``bench``
re-exports every name here):

- time: ``time_fn`` (median and min of repeated runs), ``time_interleaved``
  (several functions in turns, round after round, so a busy spell on a shared
  machine slows all of them alike; compare ratios, never times),
  ``time_interleaved_or_oom`` and ``median_or_oom`` (a run out of device
  memory is None, a result), and ``fwd_bwd``, the one forward-and-backward
  closure benchmarks time;
- memory: ``peak_memory`` (CUDA's allocator high-water mark, or on CPU
  ``peak_tensor_bytes``: the tensors alive at once, counted operator by
  operator, exact on any machine);
- both: ``measure`` one function, ``sweep`` a function over sizes.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from minimodels._util import check, check_positive

__all__ = [
    "time_fn",
    "time_interleaved",
    "time_interleaved_or_oom",
    "fwd_bwd",
    "median_or_oom",
    "peak_memory",
    "peak_tensor_bytes",
    "measure",
    "sweep",
]


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


def time_interleaved_or_oom(
    fns: Mapping[K, Callable[[], Any]], **timing: Any
) -> dict[K, float | None]:
    """``time_interleaved`` (``timing`` are its keyword options: rounds, warmup,
    best, device), where a function that runs out of device memory
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
