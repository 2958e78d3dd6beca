"""Hyena vs causal attention: forward+backward time against sequence length, and
associative recall at long length.

    python -m benchmarks.hyena --device cuda          # 1K .. 128K tokens
    python -m benchmarks.hyena recall --device cuda   # 8K .. 32K tokens, vocab 30

``speed`` times one ``HyenaOperator`` (order 2, implicit filters) and one
``MultiHeadAttention`` (SDPA, causal; FlashAttention on a GPU in bf16) of the
same width, each with its input and output projections, forward and backward.
It prints the ratio attention / Hyena per length, marks the crossover (the
shortest measured length from which Hyena is faster at every longer length) and
fits power laws. The Hyena paper (Poli et al., 2023, arXiv:2302.10866) reports
Hyena 2x faster than FlashAttention at 8K and 100x at 64K.

``recall`` trains one LM per (vocabulary, length, mixer) on associative recall
exactly as chapter 4 trains its Hyena (width 128, one layer unless ``name:L``
asks for L, AdamW, warmup 20, no weight decay, multi-query targets with
``--dense``) and scores the last key of ``--val-size`` held-out sequences. On a
GPU the defaults are the paper's Table 4.3 setting (vocab 30, 8K-32K tokens).

    python -m benchmarks.hyena recall --threads 1 --dense   # the chapter's grid
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minimodels import bench
from minimodels.attention import MultiHeadAttention
from minimodels.hyena import HyenaOperator

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CUDA_LENGTHS = [2**k for k in range(10, 18)]  # 1K .. 128K
CPU_LENGTHS = [256, 512, 1024, 2048, 4096]


def make_pair(
    dim: int, n: int, *, heads: int, order: int = 2, filter_order: int = 64
) -> dict[str, nn.Module]:
    """The two mixers compared, at width ``dim`` and length ``n``."""
    return {
        "hyena": HyenaOperator(dim, max_len=n, order=order, filter_order=filter_order),
        "attention": MultiHeadAttention(dim, heads=heads, rotary=False),
    }


def fwd_bwd(
    module: nn.Module, batch: int, n: int, dim: int, device: str, dtype: torch.dtype
) -> Callable[[], None]:
    """A closure running forward and backward once on a random input."""
    x = torch.randn(batch, n, dim, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x)

    def run() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).backward(grad)

    return run


def crossover(rows: Sequence[dict[str, Any]]) -> int | None:
    """Shortest n from which Hyena is faster than attention at every longer n."""
    found = None
    for row in reversed(rows):
        a, h = row.get("attention_s"), row.get("hyena_s")
        if h is None or (a is not None and a <= h):
            break
        found = row["n"]  # attention slower, or out of memory
    return found


def speed(args: argparse.Namespace) -> dict[str, Any]:
    dtype = DTYPES[args.dtype]
    rows = []
    for n in args.lengths:
        torch.manual_seed(0)
        row: dict[str, Any] = {"n": n}
        for name, module in make_pair(args.dim, n, heads=args.heads).items():
            module = module.to(args.device, dtype)
            fn = fwd_bwd(module, args.batch, n, args.dim, args.device, dtype)
            row[f"{name}_s"] = bench.median_or_oom(
                fn, device=args.device, repeats=args.repeats
            )
            del module, fn
        a, h = row["attention_s"], row["hyena_s"]
        row["speedup"] = a / h if a is not None and h is not None else None
        rows.append(row)
        _print_row(row)
    result: dict[str, Any] = {
        "rows": rows,
        "crossover": crossover(rows),
        "dim": args.dim,
        "heads": args.heads,
        "batch": args.batch,
        "dtype": args.dtype,
        "order": 2,
        "filter_order": 64,
        "paper_claims": {"8192": 2.0, "65536": 100.0},
    }
    for name in ("hyena", "attention"):
        pts = [(r["n"], r[f"{name}_s"]) for r in rows if r[f"{name}_s"]]
        if len(pts) >= 2:
            result[f"{name}_exponent"] = bench.fit_power_law(*zip(*pts))[0]
    print(f"crossover: {result['crossover']}")
    return result


def _print_row(row: dict[str, Any]) -> None:
    def fmt(s: float | None) -> str:
        return "OOM" if s is None else f"{1e3 * s:10.2f} ms"

    ratio = "-" if row["speedup"] is None else f"{row['speedup']:.2f}x"
    print(
        f"n={row['n']:>7}  hyena {fmt(row['hyena_s'])}  attention "
        f"{fmt(row['attention_s'])}  attention/hyena {ratio}",
        flush=True,
    )


def _recall_train(n: int, vocab: int, device: str, dense: bool) -> Callable:
    """Fresh training batches; ``dense``: multi-query targets (every repeated key)."""
    from minimodels.data import associative_recall

    def draw(batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        x, y = associative_recall(batch, n, vocab, multi_query=dense, seed=seed)
        return x.to(device), y.to(device)

    return draw


def _mixer(name: str, n: int) -> Callable[[int], nn.Module]:
    if name == "hyena":  # the paper's recall config: emb_dim 5, w 10
        return partial(
            HyenaOperator, max_len=n, emb_dim=5, sin_freq=10.0, filter_lr=3e-3
        )
    if name == "attention":
        return partial(MultiHeadAttention, heads=1)
    if name == "h3":
        from minimodels.h3 import H3

        return H3
    raise ValueError(f"mixers: unknown mixer {name!r} (hyena, h3, attention)")


def _mixer_depth(spec: str, depth: int) -> tuple[str, int]:
    """``"attention"`` -> (name, depth); ``"attention:2"`` -> ("attention", 2)."""
    name, _, layers = spec.partition(":")
    return name, int(layers) if layers else depth


def recall(args: argparse.Namespace) -> dict[str, Any]:
    """One LM per (vocab, length, mixer), trained as the chapter trains its own."""
    from minimodels.data import associative_recall
    from minimodels.lm import LM
    from minimodels.train import TrainConfig, train

    rows = []
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        warmup=20,
        weight_decay=0.0,
        eval_every=args.steps,
        eval_batches=-(-args.val_size // args.batch),
        progress=False,
    )
    for vocab in args.vocabs:
        for length in args.lengths:
            n = length + 1 if length % 2 == 0 else length  # pairs plus the query
            data = _recall_train(n, vocab, args.device, args.dense)
            x, y = associative_recall(args.val_size, n, vocab, seed=12345)
            val = (x.to(args.device), y.to(args.device))  # the last key only
            for spec in args.mixers:
                name, depth = _mixer_depth(spec, args.depth)
                torch.manual_seed(0)
                model = LM(vocab, args.dim, depth, _mixer(name, n)).to(args.device)
                start = time.perf_counter()
                try:
                    hist = train(model, data, val, config, description=name)
                    acc, loss = hist.final_acc, hist.final_loss
                except torch.OutOfMemoryError:
                    acc, loss = None, None
                seconds = time.perf_counter() - start
                rows.append(
                    {
                        "mixer": name,
                        "depth": depth,
                        "n": n,
                        "vocab": vocab,
                        "acc": acc,
                        "loss": loss,
                        "seconds": seconds,
                        "steps": args.steps,
                    }
                )
                print(
                    f"vocab {vocab:>3} n={n:>6} {name:>9} x{depth}: acc {acc}"
                    f"  ({seconds:.0f} s)",
                    flush=True,
                )
                del model
    return {
        "rows": rows,
        "dim": args.dim,
        "batch": args.batch,
        "steps": args.steps,
        "lr": args.lr,
        "dense_targets": args.dense,
        "val_size": args.val_size,
    }


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "experiment", nargs="?", default="speed", choices=["speed", "recall"]
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--dim", type=int, default=None, help="768 (speed, cuda) / 64")
    p.add_argument("--heads", type=int, default=None, help="default dim // 64")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--dtype", choices=list(DTYPES), default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--vocabs", type=int, nargs="+", default=None, help="recall")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--depth", type=int, default=1, help="layers (recall)")
    p.add_argument("--val-size", type=int, default=256, help="recall questions")
    p.add_argument("--dense", action="store_true", help="train on every repeat")
    p.add_argument(
        "--mixers",
        nargs="+",
        default=["hyena", "h3", "attention", "attention:2"],
        help="recall mixers; name:L overrides --depth for that one",
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None, help="save a figure here")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    tag = "h100" if cuda else "cpu"
    if args.experiment == "speed":
        args.lengths = args.lengths or (CUDA_LENGTHS if cuda else CPU_LENGTHS)
        args.dim = args.dim or (768 if cuda else 64)
        args.batch = args.batch or 1
        args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
        args.out = (
            args.out or bench.figures_dir() / f"data/hyena_vs_attention_{tag}.json"
        )
    else:
        args.lengths = args.lengths or ([8192, 16384, 32768] if cuda else [33, 65])
        args.vocabs = args.vocabs or ([30] if cuda else [10, 20])
        args.dim = args.dim or 128
        args.batch = args.batch or (8 if cuda else 32)
        args.out = args.out or bench.figures_dir() / f"data/hyena_recall_{tag}.json"
    args.heads = args.heads or max(1, args.dim // 64)
    return args


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("hyena", "attention"):
        pts = [(r["n"], r[f"{name}_s"]) for r in rows if r[f"{name}_s"]]
        ax.loglog(*zip(*pts), "o-", label=name)
    if result["crossover"] is not None:
        ax.axvline(result["crossover"], color="gray", ls="--", label="crossover")
    ax.set(xlabel="sequence length", ylabel="forward+backward (s)")
    ax.legend()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = speed(args) if args.experiment == "speed" else recall(args)
    result["command"] = "python -m benchmarks.hyena " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    bench.save_json(result, args.out, device=args.device)
    print(f"wrote {args.out}")
    if args.plot is not None and args.experiment == "speed":
        plot(result, args.plot)
    return result


if __name__ == "__main__":
    main()
