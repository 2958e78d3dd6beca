"""H3 vs causal attention: training throughput (tokens/s) against sequence length.

    python -m benchmarks.h3                  # CPU, toy size (dim 32, n 64 .. 1024)
    python -m benchmarks.h3 --device cuda    # GPU: dim 768, n 1K .. 16K, bf16 autocast

Each length times forward and backward of one mixer with its projections (the
two in turns, median of ``--repeats`` rounds, ``bench.time_interleaved``): an
``H3`` (FFT convolutions, O(n log n)) and a ``MultiHeadAttention`` (SDPA, causal;
FlashAttention on a GPU under bf16 autocast) of the same width. The batch holds
``--tokens`` tokens in all (batch = tokens // n, at least 1), so a flat line is
constant work per token. It prints tokens/s for both and the ratio H3 / attention,
fits power laws to the times per batch, and writes JSON (with device and
versions) to ``figures/data/h3_vs_attention_TAG.json``, TAG the device
(``bench.device_tag``: cpu, h100, h200, ...). ``--toy`` runs it in seconds.

Beside the times, each row holds what is exact and the same on every machine,
counted operator by operator over one forward and backward (``counts``):
``*_flops`` (matrix products by ``torch.utils.flop_counter``'s rules, the fused
CPU attention kernel by its SDPA formula, each real FFT of N points as
5/2 N log2 N), ``*_bytes`` (the bytes every operator reads and writes: what an
unfused implementation moves through memory) and ``*_ops`` (operators run).
Elementwise work appears in bytes and ops, not in FLOPs.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from minimodels import bench
from minimodels.attention import MultiHeadAttention
from minimodels.h3 import H3

AUTOCAST = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
CUDA_LENGTHS = [1024, 2048, 4096, 8192, 16384]
CPU_LENGTHS = [64, 128, 256, 512, 1024]


def make_pair(dim: int, *, heads: int, head_dim: int, d_state: int) -> dict:
    """The two mixers compared, at width ``dim``."""
    return {
        "h3": H3(dim, d_state=d_state, head_dim=head_dim),
        "attention": MultiHeadAttention(dim, heads=heads, rotary=False),
    }


def fwd_bwd(
    module: nn.Module, batch: int, n: int, dim: int, device: str, autocast: str
) -> Callable[[], None]:
    """``bench.fwd_bwd`` of ``module`` on a random (batch n dim) input."""
    x = torch.randn(batch, n, dim, device=device)
    return bench.fwd_bwd(module, x, autocast=AUTOCAST[autocast])


aten = torch.ops.aten


def _fft_flops(func: Any, args: tuple, out: torch.Tensor) -> int:
    """5/2 N log2 N per real transform of N points, 5 N log2 N per complex one."""
    x, dims = args[0], args[1]
    if func is aten._fft_c2r.default:
        points = args[3]
    else:
        points = x.shape[dims[-1]]
    rows = x.numel() // x.shape[dims[-1]]
    per = 5 * points * math.log2(points) if points > 1 else 0.0
    return int(rows * per * (1.0 if func is aten._fft_c2c.default else 0.5))


def _sdpa_cpu_flops(func: Any, args: tuple) -> int:
    if func is aten._scaled_dot_product_flash_attention_for_cpu.default:
        q, k, v = (t.shape for t in args[:3])
        return flop_counter.sdpa_flop_count(q, k, v)
    grad_out, q, k, v = (t.shape for t in args[:4])
    return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)


FFTS = {aten._fft_r2c.default, aten._fft_c2r.default, aten._fft_c2c.default}
SDPA_CPU = {
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_flash_attention_for_cpu_backward.default,
}


class _Counter(TorchDispatchMode):
    """Counts operators, the bytes they read and write, and their FLOPs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = self.bytes = self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        tensors = [t for t in tree_leaves((args, kwargs, out)) if torch.is_tensor(t)]
        self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        packet = func._overloadpacket
        if func in FFTS:
            self.flops += _fft_flops(func, args, out)
        elif func in SDPA_CPU:
            self.flops += _sdpa_cpu_flops(func, args)
        elif packet in flop_counter.flop_registry:
            count = flop_counter.flop_registry[packet]
            self.flops += count(*args, **kwargs, out_val=out)
        return out


def counts(module: nn.Module, batch: int, n: int, dim: int) -> dict[str, int]:
    """FLOPs, bytes moved and operators of one forward and backward on the CPU."""
    fn = fwd_bwd(module, batch, n, dim, "cpu", "none")
    fn()  # first call: lazy initialisation stays out of the count
    counter = _Counter()
    with counter:
        fn()
    return {"flops": counter.flops, "bytes": counter.bytes, "ops": counter.ops}


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for n in args.lengths:
        batch = max(1, args.tokens // n)
        row: dict[str, Any] = {"n": n, "batch": batch}
        torch.manual_seed(0)
        pair = make_pair(
            args.dim, heads=args.heads, head_dim=args.head_dim, d_state=args.d_state
        )
        fns = {
            name: fwd_bwd(module.to(args.device), batch, n, args.dim, args.device,
                          args.autocast)
            for name, module in pair.items()
        }  # fmt: skip
        times = bench.time_interleaved_or_oom(
            fns, rounds=args.repeats, best=False, device=args.device
        )  # the median of interleaved rounds: a busy spell slows both alike
        for name, seconds in times.items():
            row[f"{name}_s"] = seconds
            row[f"{name}_tokens_per_s"] = batch * n / seconds if seconds else None
            if args.counts:
                exact = counts(pair[name].cpu(), batch, n, args.dim)
                row.update({f"{name}_{k}": v for k, v in exact.items()})
        del pair, fns
        a, h = row["attention_s"], row["h3_s"]
        row["h3_over_attention"] = a / h if a and h else None  # throughput ratio
        rows.append(row)
        _print_row(row)
    result: dict[str, Any] = {
        "rows": rows,
        "dim": args.dim,
        "heads": args.heads,
        "head_dim": args.head_dim,
        "d_state": args.d_state,
        "tokens": args.tokens,
        "autocast": args.autocast,
    }
    for name in ("h3", "attention"):
        # time per token against n: exponent ~0 for H3 (log n), ~1 for attention
        pts = [(r["n"], r[f"{name}_s"] / (r["n"] * r["batch"])) for r in rows]
        pts = [(n, s) for n, s in pts if s]
        if len(pts) >= 2:
            result[f"{name}_per_token_exponent"] = bench.fit_power_law(*zip(*pts))[0]
    return result


def _print_row(row: dict[str, Any]) -> None:
    def fmt(rate: float | None) -> str:
        return "       OOM" if rate is None else f"{rate:10.0f}"

    ratio = row["h3_over_attention"]
    print(
        f"n={row['n']:>6} batch={row['batch']:>4}  tokens/s: "
        f"h3 {fmt(row['h3_tokens_per_s'])}  attention "
        f"{fmt(row['attention_tokens_per_s'])}  h3/attention "
        f"{'-' if ratio is None else f'{ratio:.2f}x'}",
        flush=True,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--dim", type=int, default=None, help="768 on cuda, else 32")
    p.add_argument("--heads", type=int, default=None, help="attention heads")
    p.add_argument("--head-dim", type=int, default=1, help="H3 head dim")
    p.add_argument("--d-state", type=int, default=64)
    p.add_argument("--tokens", type=int, default=None, help="tokens per batch")
    p.add_argument("--autocast", choices=list(AUTOCAST), default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-counts", dest="counts", action="store_false",
                   help="skip the FLOP, byte and operator counts")  # fmt: skip


def defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The sizes left unset: a GPU's or the CPU's."""
    cuda = args.device.startswith("cuda")
    args.lengths = args.lengths or (CUDA_LENGTHS if cuda else CPU_LENGTHS)
    args.dim = args.dim or (768 if cuda else 32)
    args.heads = args.heads or max(1, args.dim // 64)
    args.tokens = args.tokens or (16384 if cuda else 2048)
    args.autocast = args.autocast or ("bfloat16" if cuda else "none")
    return args


def plot(result: dict[str, Any], path: Path) -> None:
    series = {
        name: [(r["n"], r[f"{name}_tokens_per_s"]) for r in result["rows"]]
        for name in ("h3", "attention")
    }
    bench.plot_loglog(series, path, xlabel="sequence length",
                      ylabel="training tokens/s (fwd+bwd)")  # fmt: skip


BENCHMARK = bench.Benchmark(
    "h3", __doc__, lambda args: run(defaults(args)), "h3_vs_attention_{tag}.json",
    add_arguments, plot=plot,
    toy="--lengths 16 32 --dim 8 --d-state 4 --tokens 64 --repeats 1".split(),
)  # fmt: skip
main = BENCHMARK.main

if __name__ == "__main__":
    main()
