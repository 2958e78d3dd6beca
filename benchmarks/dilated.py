"""One dilated-attention layer's forward vs dense attention: time and memory vs N.

The layer is ``minimodels.dilated.DilatedAttention`` (projections included) with
geometric branches w_k = w_0 2^k, r_k = 2^k (w_k / r_k = w_0 rows per segment,
so every branch costs O(N w_0)); the reference is ``MultiHeadAttention`` (SDPA,
causal) at the same width, measured up to ``--dense-max`` tokens. Batch 1,
forward only, no grad. With the default 8 heads and 5 branches (r up to 16),
each head takes two offsets in the r = 16 branch (``dilated.head_slots``), so
every position is seen in every branch. At each N the two layers are timed in
turns (``bench.time_interleaved``, best of ``--repeats`` rounds); peak bytes
come from ``bench.peak_memory``.

    python -m benchmarks.dilated --device cuda   # figures/data/dilated_TAG.json
    python -m benchmarks.dilated --sizes 1024 4096 --out /tmp/dilated_cpu.json

TAG is the device (``bench.device_tag``: cpu, h100, h200, ...).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import torch

from minimodels import bench
from minimodels.attention import MultiHeadAttention
from minimodels.dilated import DilatedAttention

GPU_SIZES = [2**k for k in range(13, 21)]  # 8K ... 1M tokens
CPU_SIZES = [2**k for k in range(10, 15)]


def _forward(layer: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def forward() -> None:
        with torch.no_grad():
            layer(x)

    return forward


def geometric_branches(w0: int, count: int) -> tuple[list[int], list[int]]:
    """w_k = w0 2^k, r_k = 2^k for k < count."""
    return [w0 * 2**k for k in range(count)], [2**k for k in range(count)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--w0", type=int, default=256, help="first segment length")
    p.add_argument("--branches", type=int, default=5)
    p.add_argument("--dense-max", type=int, default=131072)
    p.add_argument("--dtype", default=None, help="default: bf16 on cuda")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds")


def _layers(args: argparse.Namespace, dtype: torch.dtype) -> dict[str, Any]:
    segs, rates = geometric_branches(args.w0, args.branches)
    torch.manual_seed(0)
    layers = {
        "dilated": DilatedAttention(
            args.dim, args.heads, segment_lengths=segs, dilation_rates=rates
        ),
        "dense": MultiHeadAttention(args.dim, heads=args.heads),
    }
    return {name: layer.to(args.device, dtype).eval() for name, layer in layers.items()}


def _row(name: str, n: int, seconds: float | None, peak: int) -> dict[str, Any]:
    rate = n / seconds if seconds else None
    return {"layer": name, "n": n, "tokens_per_s": rate, "min_s": seconds,
            "peak_bytes": peak}  # fmt: skip


def measure(args: argparse.Namespace, sizes: Sequence[int], dtype: torch.dtype):
    """Rows of (layer, n): best seconds of interleaved rounds, peak bytes."""
    layers = _layers(args, dtype)
    rows = []
    for n in sizes:
        x = torch.randn(1, n, args.dim, device=args.device, dtype=dtype)
        fns = {name: _forward(layer, x) for name, layer in layers.items()
               if name != "dense" or n <= args.dense_max}  # fmt: skip
        seconds = bench.time_interleaved_or_oom(
            fns, rounds=args.repeats, device=args.device
        )
        for name, fn in fns.items():
            peak = bench.peak_memory(fn, device=args.device) if seconds[name] else 0
            rows.append(_row(name, n, seconds[name], peak))
        del x, fns
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    cuda = args.device.startswith("cuda")
    sizes = args.sizes or (GPU_SIZES if cuda else CPU_SIZES)
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    rows = measure(args, sizes, dtype)
    dense_at = {r["n"]: r for r in rows if r["layer"] == "dense"}
    print(f"{'layer':>8} {'N':>9} {'ms':>10} {'MiB':>9} {'x dense':>8}")
    for r in rows:
        ref = dense_at.get(r["n"])
        ratio = "-"
        if ref is not None and ref["min_s"] and r["min_s"]:
            ratio = f"{ref['min_s'] / r['min_s']:.2f}"
        ms = f"{1e3 * r['min_s']:.2f}" if r["min_s"] else "OOM"
        print(f"{r['layer']:>8} {r['n']:>9} {ms:>10} "
              f"{r['peak_bytes'] / 2**20:>9.1f} {ratio:>8}")  # fmt: skip
    fits = {}
    for name in ("dilated", "dense"):
        pts = [(r["n"], r["min_s"]) for r in rows if r["layer"] == name and r["min_s"]]
        if len(pts) >= 2:
            fits[name] = bench.fit_power_law(*zip(*pts))[0]
            print(f"{name}: time ~ N^{fits[name]:.2f}")
    segs, rates = geometric_branches(args.w0, args.branches)
    skip = ("out", "command")
    config = {k: v for k, v in vars(args).items() if k not in skip}
    config.update(sizes=sizes, segment_lengths=segs, dilation_rates=rates)
    return {"config": config, "rows": rows, "time_exponent": fits}


TOY = "--sizes 64 128 --dim 16 --heads 2 --w0 8 --branches 2 --dense-max 64"
BENCHMARK = bench.Benchmark(
    "dilated", __doc__, run, "dilated_{tag}.json", add_arguments,
    toy=[*TOY.split(), "--repeats", "1"],
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    return BENCHMARK.main(argv)["rows"]


if __name__ == "__main__":
    main()
