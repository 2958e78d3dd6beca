"""One dilated-attention layer's forward vs dense attention: time and memory vs N.

The layer is ``minimodels.dilated.DilatedAttention`` (projections included) with
geometric branches w_k = w_0 2^k, r_k = 2^k (w_k / r_k = w_0 rows per segment,
so every branch costs O(N w_0)); the reference is ``MultiHeadAttention`` (SDPA,
causal) at the same width, measured up to ``--dense-max`` tokens. Batch 1,
forward only, no grad. With the default 8 heads and 5 branches (r up to 16),
each head takes two offsets in the r = 16 branch (``dilated.head_slots``), so
every position is seen in every branch.

    python -m benchmarks.dilated --device cuda --out figures/data/dilated_h100.json
    python -m benchmarks.dilated --sizes 1024 4096 --out /tmp/dilated_cpu.json
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
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


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--w0", type=int, default=256, help="first segment length")
    parser.add_argument("--branches", type=int, default=5)
    parser.add_argument("--dense-max", type=int, default=131072)
    parser.add_argument("--dtype", default=None, help="default: bf16 on cuda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="figures/data/dilated_cpu.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    sizes = args.sizes or (GPU_SIZES if cuda else CPU_SIZES)
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    segs, rates = geometric_branches(args.w0, args.branches)
    torch.manual_seed(0)
    dilated = DilatedAttention(
        args.dim, args.heads, segment_lengths=segs, dilation_rates=rates
    )
    dense = MultiHeadAttention(args.dim, heads=args.heads)
    layers = {"dilated": dilated, "dense": dense}
    for layer in layers.values():
        layer.to(args.device, dtype).eval()
    rows = []
    for n in sizes:
        x = torch.randn(1, n, args.dim, device=args.device, dtype=dtype)
        for name, layer in layers.items():
            if name == "dense" and n > args.dense_max:
                continue
            fn = _forward(layer, x)
            m = bench.measure(fn, device=args.device, repeats=args.repeats)
            rows.append({"layer": name, "n": n, "tokens_per_s": n / m["min_s"], **m})
        del x
    dense_at = {r["n"]: r for r in rows if r["layer"] == "dense"}
    print(f"{'layer':>8} {'N':>9} {'ms':>10} {'MiB':>9} {'x dense':>8}")
    for r in rows:
        ref = dense_at.get(r["n"])
        ratio = f"{ref['min_s'] / r['min_s']:.2f}" if ref else "-"
        print(
            f"{r['layer']:>8} {r['n']:>9} {1e3 * r['min_s']:>10.2f} "
            f"{r['peak_bytes'] / 2**20:>9.1f} {ratio:>8}"
        )
    fits = {}
    for name in layers:
        pts = [(r["n"], r["min_s"]) for r in rows if r["layer"] == name]
        if len(pts) >= 2:
            fits[name] = bench.fit_power_law(*zip(*pts))[0]
            print(f"{name}: time ~ N^{fits[name]:.2f}")
    config = {k: v for k, v in vars(args).items() if k != "out"}
    config.update(sizes=sizes, segment_lengths=segs, dilation_rates=rates)
    bench.save_json(
        {"config": config, "rows": rows, "time_exponent": fits},
        args.out,
        device=args.device,
    )
    return rows


if __name__ == "__main__":
    main()
