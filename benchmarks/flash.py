"""FlashAttention TFLOP/s: our Triton kernel vs ``F.scaled_dot_product_attention``.

The FlashAttention-2 paper's grid (Dao, 2023, arXiv:2307.08691, Fig. 4-7): hidden
size 2048 (heads = 2048 / head dim), batch * N = 16K tokens, N = 1K..16K, head dim
64 and 128, causal and not, forward, backward and forward + backward, here in bf16
and fp16. SDPA runs with its flash backend and, where available, its cuDNN backend,
in the same run. FLOPs as in the paper: forward 4 N^2 d per head (halved when
causal), backward 2.5x the forward (five N x N products against two). Our
two-kernel backward does seven (chapter 5, step 5): its extra work is not
credited, so it shows as lower TFLOP/s. At each configuration the providers
are timed in turns (``bench.time_interleaved``, median of ``--repeats`` rounds).

    python -m benchmarks.flash      # on a GPU: figures/data/flash_TAG.json
    python -m benchmarks.flash --device cpu --toy     # seconds, CPU interpreter

TAG is the GPU (``bench.device_tag``: h100, h200, a100, ...), or cpu.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from minimodels import bench

MODES = ("fwd", "bwd", "fwd+bwd")
GPU_SEQ_LENS = [1024, 2048, 4096, 8192, 16384]


def attention_flops(batch: int, heads: int, n: int, d: int, causal: bool, mode: str):
    fwd = 4 * batch * heads * n * n * d / (2 if causal else 1)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]


def _providers(device: str) -> dict[str, Callable[..., torch.Tensor]]:
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels exist
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from minimodels.kernels.flash import flash_attention

    def sdpa(backend: SDPBackend) -> Callable[..., torch.Tensor]:
        def run(q, k, v, causal):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return run

    if device == "cpu":
        return {"ours": flash_attention, "sdpa-math": sdpa(SDPBackend.MATH)}
    return {
        "ours": flash_attention,
        "sdpa-flash": sdpa(SDPBackend.FLASH_ATTENTION),
        "sdpa-cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
    }


def _call(fn, q, k, v, causal: bool, mode: str) -> Callable[[], Any]:
    """One provider's call in one mode: forward (no grad), backward of a kept
    forward, or forward and backward (``bench.fwd_bwd``)."""
    if mode == "fwd":

        def forward() -> None:
            with torch.no_grad():
                fn(q, k, v, causal)

        return forward
    if mode == "bwd":
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves, causal)
        do = torch.randn_like(out)
        return lambda: out.backward(do, retain_graph=True)
    return bench.fwd_bwd(lambda q, k, v: fn(q, k, v, causal), q, k, v)


def _timed(calls: dict[str, Callable[[], Any]], device: str, repeats: int) -> dict:
    """Median seconds of each call, in turns; a provider whose backend is not
    available here (its first call raises) is skipped."""
    ready = {}
    for name, call in calls.items():
        try:
            call()
        except RuntimeError as err:  # backend not available
            print(f"  {name}: skipped ({err})"[:120])
            continue
        ready[name] = call
    return bench.time_interleaved(
        ready, rounds=repeats, warmup=0, best=False, device=device
    )


def run(
    *,
    device: str,
    dtypes: Sequence[torch.dtype],
    head_dims: Sequence[int],
    seq_lens: Sequence[int],
    tokens: int,
    hidden: int,
    repeats: int,
) -> list[dict[str, Any]]:
    rows = []
    providers = _providers(device)
    for dtype in dtypes:
        for d in head_dims:
            for causal in (False, True):
                for n in seq_lens:
                    batch, heads = max(1, tokens // n), hidden // d
                    g = torch.Generator().manual_seed(0)
                    q, k, v = (
                        torch.randn(batch, heads, n, d, generator=g).to(device, dtype)
                        for _ in range(3)
                    )
                    for mode in MODES:
                        calls = {name: _call(fn, q, k, v, causal, mode)
                                 for name, fn in providers.items()}  # fmt: skip
                        flops = attention_flops(batch, heads, n, d, causal, mode)
                        for name, s in _timed(calls, device, repeats).items():
                            rows.append(
                                {"provider": name, "mode": mode,
                                 "dtype": str(dtype).removeprefix("torch."),
                                 "head_dim": d, "causal": causal, "n": n,
                                 "batch": batch, "heads": heads, "seconds": s,
                                 "tflops": flops / s / 1e12}
                            )  # fmt: skip
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """TFLOP/s per configuration, and ours / each SDPA backend."""
    keys = sorted(
        {(r["dtype"], r["head_dim"], r["causal"], r["mode"], r["n"]) for r in rows}
    )
    names = list(dict.fromkeys(r["provider"] for r in rows))
    print(f"{'dtype':9}{'d':>4}{'causal':>7}{'mode':>8}{'N':>7}", end="")
    print(
        "".join(f"{n:>12}" for n in names),
        "".join(f"{'ours/' + n:>18}" for n in names[1:]),
    )
    for key in keys:
        tf = {
            r["provider"]: r["tflops"]
            for r in rows
            if (r["dtype"], r["head_dim"], r["causal"], r["mode"], r["n"]) == key
        }
        line = f"{key[0]:9}{key[1]:>4}{key[2]!s:>7}{key[3]:>8}{key[4]:>7}"
        line += "".join(f"{tf[n]:12.4g}" if n in tf else f"{'-':>12}" for n in names)
        line += "".join(
            f"{tf['ours'] / tf[n]:18.2f}" if "ours" in tf and n in tf else f"{'-':>18}"
            for n in names[1:]
        )
        print(line)  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtypes", nargs="+", default=None, help="bfloat16 float16")
    p.add_argument("--head-dims", nargs="+", type=int, default=None)
    p.add_argument("--seq-lens", nargs="+", type=int, default=None)
    p.add_argument("--tokens", type=int, default=None, help="batch * N")
    p.add_argument("--hidden", type=int, default=None, help="heads * head dim")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds")


def run_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    gpu = args.device != "cpu"
    dtypes = args.dtypes or (["bfloat16", "float16"] if gpu else ["float32"])
    rows = run(
        device=args.device,
        dtypes=[getattr(torch, name) for name in dtypes],
        head_dims=args.head_dims or ([64, 128] if gpu else [16]),
        seq_lens=args.seq_lens or (GPU_SEQ_LENS if gpu else [32, 64]),
        tokens=args.tokens or (16384 if gpu else 64),
        hidden=args.hidden or (2048 if gpu else 32),
        repeats=args.repeats or (10 if gpu else 1),
    )  # fmt: skip
    print_table(rows)
    return rows


TOY = "--seq-lens 32 --tokens 32 --hidden 32 --repeats 1"
BENCHMARK = bench.Benchmark(
    "flash", __doc__, run_args, "flash_{tag}.json", add_arguments, TOY.split(),
    device="auto",
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark; returns the path of the JSON it wrote."""
    args = BENCHMARK.parse(argv)
    BENCHMARK.call(args)
    return args.out


if __name__ == "__main__":
    main()
