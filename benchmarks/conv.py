"""Causal long convolution: the four paths of ``minimodels.conv`` against each other,
or ``fft_conv`` against causal attention at the same width.

    python -m benchmarks.conv                # CPU: direct, Toeplitz, FFT, Monarch
    python -m benchmarks.conv --device cuda  # GPU: fft_conv vs SDPA, n to 2^20

``--mode paths`` (the default on CPU) times ``conv_direct``, ``conv_toeplitz``,
``fft_conv`` and ``fft_conv_monarch`` on (b d n) signals with (d n) filters; the
quadratic paths stop at ``--max-direct-log2``. ``--mode attention`` (the default on
CUDA) times ``fft_conv`` on (b d n) against causal ``scaled_dot_product_attention``
on (b h n d/h) queries, keys and values: the token-mixing step of a layer of width
d, each without its projections. At each length the functions are timed in
turns (``bench.time_interleaved``, best of ``--repeats`` rounds). Both print a
table with ratios measured in the same run and write JSON with provenance to
``figures/data/conv_paths_TAG.json`` or ``conv_vs_attention_TAG.json``, TAG the
device (``bench.device_tag``: cpu, h100, h200, ...); chapter 1 plots the H100's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from minimodels import bench, conv

PATHS = ("direct", "toeplitz", "fft", "monarch")
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def conv_path(name: str, *, radix: int | None = 32) -> Callable[..., torch.Tensor]:
    """The conv path called ``name``; Monarch splits 2n into factors <= radix."""
    if name == "monarch":

        def monarch(u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            factors = conv.monarch_factors(2 * u.shape[-1], max_factor=radix)
            return conv.fft_conv_monarch(u, h, factors=factors)

        return monarch
    fns = {"direct": conv.conv_direct, "toeplitz": conv.conv_toeplitz}
    return fns.get(name, conv.fft_conv)


def _seconds(
    fns: dict[str, Callable[[], Any]], args: argparse.Namespace
) -> dict[str, float | None]:
    return bench.time_interleaved_or_oom(fns, rounds=args.repeats, device=args.device)


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None else num / den


def _paths_row(n: int, args: argparse.Namespace, g: torch.Generator) -> dict:
    u = torch.randn(args.batch, args.dim, n, generator=g).to(args.device)
    h = (torch.randn(args.dim, n, generator=g) / n**0.5).to(args.device)
    fns: dict[str, Callable[[], Any]] = {}
    for name in PATHS:
        if name in ("direct", "toeplitz") and n > 2**args.max_direct_log2:
            continue  # quadratic: too slow (and Toeplitz too big) here
        fns[name] = partial(conv_path(name, radix=args.radix), u, h)
    seconds = dict.fromkeys(PATHS, None) | _seconds(fns, args)
    return {
        "n": n,
        "seconds": seconds,
        "fft_vs_direct": _ratio(seconds["direct"], seconds["fft"]),
        "monarch_vs_fft": _ratio(seconds["monarch"], seconds["fft"]),
    }


def run_paths(args: argparse.Namespace) -> list[dict[str, Any]]:
    g = torch.Generator(device="cpu").manual_seed(0)
    sizes = [2**k for k in range(args.min_log2, args.max_log2 + 1)]
    return [_paths_row(n, args, g) for n in sizes]


def _attention_row(n: int, args: argparse.Namespace) -> dict:
    dtype, dev = DTYPES[args.dtype], torch.device(args.device)
    g = torch.Generator(device=dev).manual_seed(0)
    u = torch.randn(args.batch, args.dim, n, generator=g, device=dev, dtype=dtype)
    h = torch.randn(args.dim, n, generator=g, device=dev, dtype=dtype) / n**0.5
    shape = (args.batch, args.heads, n, args.dim // args.heads)
    q, k, v = (torch.randn(shape, generator=g, device=dev, dtype=dtype) for _ in "qkv")

    def conv_fn() -> torch.Tensor:
        return conv.fft_conv(u, h)

    def attention_fn() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    seconds = _seconds({"fft_conv": conv_fn, "attention": attention_fn}, args)
    memory = {}
    if dev.type == "cuda":
        memory = {
            "fft_conv": bench.peak_memory(conv_fn, device=dev),
            "attention": bench.peak_memory(attention_fn, device=dev),
        }
    return {
        "n": n,
        "seconds": seconds,
        "peak_bytes": memory,
        "attention_vs_fft_conv": _ratio(seconds["attention"], seconds["fft_conv"]),
    }


def run_attention(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.dim % args.heads != 0:
        raise ValueError(f"heads ({args.heads}) must divide dim ({args.dim})")
    sizes = [2**k for k in range(args.min_log2, args.max_log2 + 1)]
    return [_attention_row(n, args) for n in sizes]


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.3f}"


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:.1f}x"


def print_table(mode: str, rows: list[dict[str, Any]]) -> None:
    if mode == "paths":
        head = ["n", *(f"{p} ms" for p in PATHS), "direct/fft", "monarch/fft"]
        body = [
            [str(r["n"]), *(_ms(r["seconds"][p]) for p in PATHS),
             _x(r["fft_vs_direct"]), _x(r["monarch_vs_fft"])]
            for r in rows
        ]  # fmt: skip
    else:
        head = ["n", "fft_conv ms", "attention ms", "attention/fft_conv"]
        body = [
            [str(r["n"]), _ms(r["seconds"]["fft_conv"]),
             _ms(r["seconds"]["attention"]), _x(r["attention_vs_fft_conv"])]
            for r in rows
        ]  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    for line in [head, *body]:
        print("  ".join(x.rjust(w) for x, w in zip(line, widths)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["paths", "attention"], default=None,
                   help="default: paths on CPU, attention on CUDA")  # fmt: skip
    p.add_argument("--min-log2", type=int, default=None, help="smallest n = 2^this")
    p.add_argument("--max-log2", type=int, default=None, help="largest n = 2^this")
    p.add_argument("--max-direct-log2", type=int, default=12,
                   help="largest n for the quadratic paths")  # fmt: skip
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dim", type=int, default=None, help="channels (width d)")
    p.add_argument("--heads", type=int, default=12, help="attention heads")
    p.add_argument("--radix", type=int, default=32, help="largest Monarch factor")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="attention mode; default bfloat16 on CUDA")  # fmt: skip
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds")


def defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The mode and sizes left unset: a GPU's or the CPU's."""
    cuda = args.device.startswith("cuda")
    args.mode = args.mode or ("attention" if cuda else "paths")
    attention = args.mode == "attention"
    if args.min_log2 is None:
        args.min_log2 = 10 if attention and cuda else 6
    if args.max_log2 is None:
        args.max_log2 = (20 if cuda else 12) if attention else 16
    if args.dim is None:
        args.dim = 768 if attention else 4
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    defaults(args)
    rows = (run_paths if args.mode == "paths" else run_attention)(args)
    print_table(args.mode, rows)
    skip = ("out", "command")
    config = {k: v for k, v in vars(args).items() if k not in skip}
    return {"mode": args.mode, "config": config, "rows": rows}


def _out(args: argparse.Namespace) -> str:
    mode = args.mode or ("attention" if args.device.startswith("cuda") else "paths")
    return (
        "conv_paths_{tag}.json" if mode == "paths" else "conv_vs_attention_{tag}.json"
    )


BENCHMARK = bench.Benchmark(
    "conv", __doc__, run, _out, add_arguments,
    toy=["--min-log2", "4", "--max-log2", "5", "--repeats", "1"],
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    return BENCHMARK.main(argv)["rows"]


if __name__ == "__main__":
    main()
