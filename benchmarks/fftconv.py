"""The fused FFT convolution kernel against ``torch.fft`` and FlashAttention.

Times ``minimodels.kernels.fftconv.fft_conv`` (IEEE fp32 dots, and TF32) against
``minimodels.conv.fft_conv`` (rfft, multiply, irfft: each intermediate goes to
memory) and against causal ``scaled_dot_product_attention`` (FlashAttention's
kernel on a GPU) at the same width, forward and forward + backward, for lengths up
to the kernel's largest (n = 2048). Besides the times it stores the exact bytes
each convolution moves (``unfused_bytes``, ``fused_bytes``), which chapter 1
checks against counts taken operator by operator and load by load.

    python -m benchmarks.fftconv --device cuda   # figures/data/fftconv_<gpu>.json
    python -m benchmarks.fftconv --toy           # seconds, CPU, interpreter

On a GPU: d = 768 channels (12 heads of 64 for attention), batch * n = 16K
tokens, fp16 signals (the kernels compute in fp32), n = 256..2048.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from tqdm import tqdm

from minimodels import bench, conv

MODES = ("fwd", "fwd+bwd")
GPU_LENGTHS = [256, 512, 1024, 2048]  # up to the kernel's largest


# --- bytes moved, counted and by formula -----------------------------------------


class _Bytes(TorchDispatchMode):
    """Bytes each operator reads and writes; views (outputs that share an input's
    storage) move nothing and are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        out = func(*args, **(kwargs or {}))
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        outs = [t for t in tree_leaves(out) if isinstance(t, Tensor)]
        stores = {t.untyped_storage().data_ptr() for t in ins}
        if not any(t.untyped_storage().data_ptr() in stores for t in outs):
            size = sum(t.numel() * t.element_size() for t in ins)
            self.ops.append((str(func.overloadpacket), size, _nbytes(outs)))
        return out


def _nbytes(tensors: Sequence[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def torch_bytes(fn: Callable[[], Any]) -> list[tuple[str, int, int]]:
    """(operator, bytes read, bytes written) for each PyTorch operator ``fn()`` runs
    that is not a view. (A Triton kernel under the interpreter copies its arguments
    through PyTorch: count kernels with ``kernels.io.interpreter_io`` instead.)"""
    mode = _Bytes()
    with mode:
        fn()
    return mode.ops


def unfused_bytes(b: int, d: int, n: int, k: int, dtype: torch.dtype) -> int:
    """What ``conv.fft_conv(u, h, D)`` moves, u (b d n) in ``dtype``, h (d k) and D
    (d,) float32: pad u to 2n, rfft (n + 1 complex), the same for h, multiply,
    irfft to 2n, slice, D u, add (and u to and from float32 if it is not)."""
    rows, m, f, e = b * d, 2 * n, n + 1, torch.empty(0, dtype=dtype).element_size()
    per_row = 6 * n * 4 + 3 * m * 4 + 4 * f * 8  # u's path, every array in memory
    if e != 4:
        per_row += 3 * n * (e + 4)  # u to float32 twice, y back once
    per_channel = k * 4 + 2 * m * 4 + 2 * f * 8 + 4  # h's pad, rfft, read; D
    return rows * per_row + d * per_channel


def fused_bytes(
    b: int, d: int, n: int, dtype: torch.dtype, *, rows_per_program: int, skip: bool
) -> dict[str, int]:
    """What the fused kernel loads and stores: u and y once, D once per row, the
    filter spectrum (2m float32 per channel) once per program."""
    from minimodels.kernels.fftconv import fft_size

    m = fft_size(n)[0]
    e = torch.empty(0, dtype=dtype).element_size()
    programs = d * math.ceil(b / rows_per_program)
    read = b * d * n * e + programs * 2 * m * 4 + (b * d * 4 if skip else 0)
    return {"read": read, "written": b * d * n * e}


# --- timing ---------------------------------------------------------------------


def _convolutions(device: str) -> dict[str, Callable[..., Tensor]]:
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels exist
    from minimodels.kernels import fftconv

    def fused(precision: str) -> Callable[..., Tensor]:
        return lambda u, h, D: fftconv.fft_conv(u, h, D, precision=precision)

    providers = {"fused": fused("ieee"), "torch.fft": conv.fft_conv}
    if device != "cpu":
        providers["fused-tf32"] = fused("tf32")
    return providers


def _attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _call(fn: Callable[..., Tensor], inputs: list[Tensor], mode: str):  # noqa: ANN202
    """A closure: fn(*inputs) without autograd, or forward and backward."""
    if mode == "fwd":

        def forward() -> None:
            with torch.no_grad():
                fn(*inputs)

        return forward
    leaves = [t.detach().requires_grad_() for t in inputs]
    probe = torch.randn_like(fn(*inputs))
    return lambda: fn(*leaves).backward(probe)


def run(args: argparse.Namespace) -> dict[str, Any]:
    cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype or ("float16" if cuda else "float32"))
    dim, tokens = (
        args.dim or (768 if cuda else 4),
        args.tokens or (16384 if cuda else 64),
    )
    heads = args.heads or max(1, dim // 64)
    rows = []
    convolutions = _convolutions(args.device)
    for n in tqdm(args.lengths or (GPU_LENGTHS if cuda else [16, 32]), "fftconv"):
        b = max(1, tokens // n)
        g = torch.Generator().manual_seed(n)
        conv_inputs = [
            torch.randn(b, dim, n, generator=g).to(args.device, dtype),
            (torch.randn(dim, n, generator=g) / n**0.5).to(args.device),
            torch.randn(dim, generator=g).to(args.device),
        ]
        qkv = [
            torch.randn(b, heads, n, dim // heads, generator=g).to(args.device, dtype)
            for _ in range(3)
        ]
        row: dict[str, Any] = {"n": n, "batch": b, "seconds": {}}
        for mode in MODES:
            fns = {f"{name} {mode}": _call(fn, conv_inputs, mode)
                   for name, fn in convolutions.items()}  # fmt: skip
            fns[f"attention {mode}"] = _call(_attention, qkv, mode)
            row["seconds"].update(
                bench.time_interleaved_or_oom(
                    fns, rounds=args.repeats, best=False, device=args.device
                )
            )
        row["unfused_bytes"] = unfused_bytes(b, dim, n, n, dtype)
        row["fused_bytes"] = fused_bytes(
            b, dim, n, dtype, rows_per_program=4, skip=True
        )
        rows.append(row)
    print_table(rows)
    return {"rows": rows, "dim": dim, "heads": heads, "tokens": tokens,
            "dtype": str(dtype).removeprefix("torch.")}  # fmt: skip


def print_table(rows: list[dict[str, Any]]) -> None:
    names = list(rows[0]["seconds"])
    print(f"{'n':>6}{'batch':>6}", "".join(f"{k:>20}" for k in names), "(ms)")
    for r in rows:
        cells = "".join(
            f"{s * 1e3:20.3f}" if s is not None else f"{'oom':>20}"
            for s in r["seconds"].values()
        )
        print(f"{r['n']:>6}{r['batch']:>6}{cells}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default=None, help="float16 on cuda, else float32")
    p.add_argument("--dim", type=int, default=None, help="768 on cuda, else 4")
    p.add_argument("--heads", type=int, default=None, help="attention heads")
    p.add_argument("--tokens", type=int, default=None, help="batch * n: 16384 on cuda")
    p.add_argument("--lengths", nargs="+", type=int, default=None)
    p.add_argument("--repeats", type=int, default=10, help="interleaved rounds")


TOY = ["--dim", "2", "--tokens", "32", "--lengths", "16", "--repeats", "1"]
BENCHMARK = bench.Benchmark(
    name="fftconv", doc=__doc__, run=run, out="fftconv_{tag}.json",
    add_arguments=add_arguments, toy=TOY,
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return BENCHMARK.main(argv)


if __name__ == "__main__":
    main()
