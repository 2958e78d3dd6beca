"""Tokens/s and peak memory of the hierarchical transformer on CPU (or a GPU).

The configuration is the first example of the simple-hierarchical-transformer
README (hierarchies (1, 2, 8), windows (32, 64, None)) scaled down: width, depth,
sequence length and vocabulary are options. Rows: ours with those hierarchies,
ours flat (hierarchies 1, the reference of the ratios), and, if the PyPI package
``simple_hierarchical_transformer`` can be imported (e.g. installed with
``pip install --target DIR simple-hierarchical-transformer`` and ``--sht-path
DIR``), the package with the same configuration and its extra losses off.
The models are timed in turns, mode by mode (``bench.time_interleaved``, best
of ``--repeats`` rounds). Memory: bytes autograd saves for backward (exact) and
``bench.peak_memory`` (on CPU the bytes of live tensors, exact).

    python -m benchmarks.hierarchical      # figures/data/hierarchical_TAG.json

TAG is the device (``bench.device_tag``: cpu, h100, h200, ...).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from minimodels import bench
from minimodels.hierarchical import HierarchicalTransformer
from minimodels.lm import count_parameters


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        num_tokens=args.num_tokens,
        dim=args.dim,
        depth=args.depth,
        dim_head=args.dim // args.heads,
        heads=args.heads,
        seq_len=args.seq_len,
        hierarchies=(1, 2, 8),
        window_sizes=(32, 64, None),
        use_flash_attn=True,
    )


def _package(path: str | None) -> Any:
    """The PyPI package's class, or None when it cannot be imported."""
    if path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module("simple_hierarchical_transformer")
    except ImportError:
        return None
    return module.HierarchicalTransformer


def _models(args: argparse.Namespace) -> dict[str, nn.Module]:
    config = _config(args)
    torch.manual_seed(0)
    models = {
        "ours (1, 2, 8)": HierarchicalTransformer(**config),
        "ours flat": HierarchicalTransformer(
            **{**config, "hierarchies": 1, "window_sizes": None}
        ),
    }
    package = _package(args.sht_path)
    if package is not None:
        models["package (1, 2, 8)"] = package(
            **config, recon_loss_weight=0.0, next_latent_loss_weight=0.0
        )
    return {name: m.to(args.device) for name, m in models.items()}


def _train_step(model: nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        loss = model(ids, return_loss=True)[0]
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def activation_bytes(model: nn.Module, ids: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd saves for the backward pass: the
    activation memory of a training step, exact on any device (CPU peak RSS is
    blurred by the allocator's caching)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids, return_loss=True)[0]
    loss.backward()
    model.zero_grad(set_to_none=True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


def _forward(model: nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    def forward() -> None:
        with torch.no_grad():
            model(ids)

    return forward


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--num-tokens", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    p.add_argument("--sht-path", default=None, help="folder holding the package")


MODES = {"train step": _train_step, "forward": _forward}


def measure(
    models: dict[str, nn.Module], ids: torch.Tensor, args: argparse.Namespace
) -> list[dict]:
    """Rows of (model, mode): best seconds of interleaved rounds, tokens/s, peak
    bytes, and for a training step the bytes saved for backward."""
    rows = []
    for mode, make in MODES.items():
        x = ids if mode == "train step" else ids[:, :-1]
        fns = {name: make(model, x) for name, model in models.items()}
        seconds = bench.time_interleaved(fns, rounds=args.repeats, device=args.device)
        for name, model in models.items():
            row = {
                "model": name, "mode": mode, "parameters": count_parameters(model),
                "tokens_per_s": args.batch * args.seq_len / seconds[name],
                "min_s": seconds[name],
                "peak_bytes": bench.peak_memory(fns[name], device=args.device),
            }  # fmt: skip
            if mode == "train step":
                row["activation_bytes"] = activation_bytes(model, ids)
            rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    models = _models(args)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.num_tokens, (args.batch, args.seq_len + 1), generator=g)
    rows = measure(models, ids.to(args.device), args)
    ref = {r["mode"]: r for r in rows if r["model"] == "ours flat"}
    head = ("model", "mode", "params", "tok/s", "x flat", "act MiB")
    print("{:>18} {:>10} {:>9} {:>9} {:>6} {:>7}".format(*head))
    for r in rows:
        mib = r.get("activation_bytes", 0) / 2**20
        ratio = r["tokens_per_s"] / ref[r["mode"]]["tokens_per_s"]
        print(
            f"{r['model']:>18} {r['mode']:>10} {r['parameters']:>9,} "
            f"{r['tokens_per_s']:>9.0f} {ratio:>6.2f} {mib:>7.1f}"
        )
    skip = ("out", "command", "sht_path")
    config = {k: v for k, v in vars(args).items() if k not in skip}
    return {"config": config, "rows": rows, "package": "package (1, 2, 8)" in models}


BENCHMARK = bench.Benchmark(
    "hierarchical", __doc__, run, "hierarchical_{tag}.json", add_arguments,
    toy="--dim 16 --heads 2 --depth 1 --seq-len 32 --batch 1 --repeats 1".split(),
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    return BENCHMARK.main(argv)["rows"]


if __name__ == "__main__":
    main()
