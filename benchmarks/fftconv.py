"""The fused FFT convolution kernel against ``torch.fft`` and FlashAttention.

Times ``minimodels.kernels.fftconv.fft_conv`` (IEEE fp32 dots, and TF32) against
``minimodels.conv.fft_conv`` (rfft, multiply, irfft: each intermediate goes to
memory) and against causal ``scaled_dot_product_attention`` (FlashAttention's
kernel on a GPU) at the same width, forward and forward + backward, for lengths up
to the kernel's largest (n = 2048). Besides the times it stores the exact bytes
each convolution moves (``unfused_bytes``, ``fused_bytes``), which chapter 1
checks against counts taken operator by operator and load by load.

    python -m benchmarks.fftconv --device cuda         # figures/data/fftconv_gpu.json
    python -m benchmarks.fftconv --device cpu          # toy size, interpreter
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from tqdm import tqdm

from minimodels import bench, conv

MODES = ("fwd", "fwd+bwd")
GPU_SEQ_LENS = [256, 512, 1024, 2048]


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
    through PyTorch: count kernels with ``fftconv.interpreter_io`` instead.)"""
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


def _providers(device: str) -> dict[str, Callable[..., Tensor]]:
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


def _time(fn: Callable[..., Tensor], inputs: list[Tensor], mode: str, device: str,
          repeats: int) -> float | None:  # fmt: skip
    if mode == "fwd":
        with torch.no_grad():
            return bench.median_or_oom(
                lambda: fn(*inputs), device=device, repeats=repeats
            )
    leaves = [t.detach().requires_grad_() for t in inputs]
    probe = torch.randn_like(fn(*inputs))
    return bench.median_or_oom(
        lambda: fn(*leaves).backward(probe), device=device, repeats=repeats
    )


def run(
    *, device: str, dtype: torch.dtype, dim: int, heads: int, tokens: int,
    seq_lens: Sequence[int], repeats: int,
) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    providers = _providers(device)
    for n in tqdm(list(seq_lens), desc="fftconv"):
        b = max(1, tokens // n)
        g = torch.Generator().manual_seed(n)
        u = torch.randn(b, dim, n, generator=g).to(device, dtype)
        h = (torch.randn(dim, n, generator=g) / n**0.5).to(device)
        D = torch.randn(dim, generator=g).to(device)
        qkv = [
            torch.randn(b, heads, n, dim // heads, generator=g).to(device, dtype)
            for _ in range(3)
        ]
        seconds = {}
        for mode in MODES:
            for name, fn in providers.items():
                seconds[f"{name} {mode}"] = _time(fn, [u, h, D], mode, device, repeats)
            seconds[f"attention {mode}"] = _time(_attention, qkv, mode, device, repeats)
        rows.append({
            "n": n, "batch": b, "dim": dim, "heads": heads,
            "dtype": str(dtype).removeprefix("torch."), "seconds": seconds,
            "unfused_bytes": unfused_bytes(b, dim, n, n, dtype),
            "fused_bytes": fused_bytes(b, dim, n, dtype, rows_per_program=4,
                                       skip=True),
        })  # fmt: skip
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    names = list(rows[0]["seconds"])
    print(f"{'n':>6}{'batch':>6}", "".join(f"{k:>22}" for k in names), "ms")
    for r in rows:
        cells = "".join(
            f"{s * 1e3:22.3f}" if s is not None else f"{'oom':>22}"
            for s in r["seconds"].values()
        )
        print(f"{r['n']:>6}{r['batch']:>6}{cells}")


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--dtype", default=None, help="float32, float16, bfloat16")
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None, help="batch * n")
    parser.add_argument("--seq-lens", nargs="+", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    gpu = args.device != "cpu"
    if not gpu:
        torch.set_num_threads(1)
    rows = run(
        device=args.device,
        dtype=getattr(torch, args.dtype or ("float16" if gpu else "float32")),
        dim=args.dim or (768 if gpu else 4),
        heads=args.heads or (12 if gpu else 1),
        tokens=args.tokens or (16384 if gpu else 64),
        seq_lens=args.seq_lens or (GPU_SEQ_LENS if gpu else [16, 32]),
        repeats=args.repeats or (10 if gpu else 1),
    )
    print_table(rows)
    name = "fftconv_gpu.json" if gpu else "fftconv_cpu.json"
    out = Path(args.out) if args.out else bench.figures_dir() / "data" / name
    bench.save_json(rows, out, device=args.device)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
