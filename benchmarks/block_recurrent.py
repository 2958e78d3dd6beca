"""Training speed of the Block-Recurrent Transformer against the seed package.

One training step = the recurrent wrapper's loss over ``--segments`` segments of
``max_seq_len`` tokens (memories and states carried), backward, AdamW step. Both
implementations get the same constructor arguments; ours adds
``single_head_kv=True``, because ``block-recurrent-transformer-pytorch`` always
uses one key/value head (Shazeer's multi-query attention) while our default
follows the paper's per-head keys and values. The parameter counts of both of
ours are recorded.

The default configuration is the consolidation issue's (vocabulary 256, width
256, depth 4, 4 heads of 64, blocks of 512 with 512 states, segments of 1024,
batch 4); ``--config readme`` is the seed README's (width 512, depth 6,
vocabulary 20000). The implementations are timed in turn, round after round,
so that a busy machine slows them alike; each round gives a ratio, and the
median ratio is reported (wall-clock and CPU seconds of this process).

The seed package is measured if it can be imported, e.g. after
``pip install --target /tmp/brt --no-deps block-recurrent-transformer-pytorch==0.4.4
beartype`` and with ``--package-path /tmp/brt``; otherwise it is skipped with a
message. It is never a dependency of this project.

    python -m benchmarks.block_recurrent --package-path /tmp/brt
                                   # figures/data/block_recurrent_TAG.json
    python -m benchmarks.block_recurrent --toy   # seconds: --config toy, no package

TAG is the device (``bench.device_tag``: cpu, h100, ...). Two threads by default.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from minimodels import bench
from minimodels.block_recurrent import BlockRecurrentTransformer, RecurrentTrainWrapper
from minimodels.lm import count_parameters

PACKAGE = "block_recurrent_transformer_pytorch"
CONFIGS = {
    "issue": dict(
        num_tokens=256, dim=256, depth=4, dim_head=64, heads=4, max_seq_len=1024,
        block_width=512, num_state_vectors=512, recurrent_layers=(2,),
        use_flash_attn=True,
    ),
    "readme": dict(
        num_tokens=20000, dim=512, depth=6, dim_head=64, heads=8, max_seq_len=1024,
        block_width=512, num_state_vectors=512, recurrent_layers=(4,),
        use_flash_attn=True,
    ),
    "toy": dict(
        num_tokens=256, dim=32, depth=2, dim_head=16, heads=2, max_seq_len=32,
        block_width=16, num_state_vectors=8, recurrent_layers=(1,),
        use_flash_attn=True,
    ),
}  # fmt: skip
BATCH = {"issue": 4, "readme": 1, "toy": 2}

Built = tuple[nn.Module, Callable[[Tensor], Tensor]]


def _ours(config: dict[str, Any], **options: Any) -> Built:
    model = BlockRecurrentTransformer(**config, **options)
    return model, RecurrentTrainWrapper(model)


def _package(config: dict[str, Any]) -> Built:
    brt = importlib.import_module(PACKAGE)
    model = brt.BlockRecurrentTransformer(**config)
    return model, brt.RecurrentTrainerWrapper(model)


def package_version(path: str | None) -> str | None:
    """The seed package's version if it imports (from ``path``), else None."""
    if path and path not in sys.path:
        sys.path.append(path)
    try:
        importlib.import_module(PACKAGE)
    except ImportError:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("block-recurrent-transformer-pytorch")
    except PackageNotFoundError:
        return "unknown"


def training_step(
    build: Callable[[], Built], config: dict[str, Any], *, batch: int,
    segments: int, device: str,
) -> tuple[Callable[[], None], int, int]:  # fmt: skip
    """A closure running one training step, its tokens and the parameter count."""
    torch.manual_seed(0)
    model, wrapper = build()
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n = segments * config["max_seq_len"] + 1
    seq = torch.randint(0, config["num_tokens"], (batch, n), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        wrapper(seq).backward()
        opt.step()

    return step, batch * (n - 1), count_parameters(model)


def measure_interleaved(
    steps: dict[str, tuple[Callable[[], None], int, int]], rounds: int, device: str
) -> dict[str, dict[str, Any]]:
    """Run the steps in turn, ``rounds`` times after a warm-up each; wall and
    CPU seconds of every step."""
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for step, _, _ in steps.values():
        step()  # warm-up
    for _ in tqdm(range(rounds), desc="interleaved rounds"):
        for name, (step, _, _) in steps.items():
            c0 = time.process_time()
            wall[name].append(bench.time_fn(step, warmup=0, repeats=1,
                                            device=device)["median_s"])  # fmt: skip
            cpu[name].append(time.process_time() - c0)
    return {
        name: {
            "parameters": params,
            "tokens_per_step": tokens,
            "wall_s": wall[name],
            "cpu_s": cpu[name],
            "tokens_per_s": tokens / statistics.median(wall[name]),
        }  # fmt: skip
        for name, (_, tokens, params) in steps.items()
    }


def ratios(results: dict[str, Any], key: str) -> list[float]:
    """Per round: the package's seconds over ours (> 1: ours is faster)."""
    pkg, ours = results["package"][key], results["minimodels"][key]
    return [p / o for p, o in zip(pkg, ours)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", choices=list(CONFIGS), default="issue")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--segments", type=int, default=1)
    p.add_argument("--rounds", "--steps", type=int, default=3)
    p.add_argument("--package-path", default=None)
    p.add_argument("--no-package", action="store_true")
    p.set_defaults(threads=2)  # this benchmark's own default: two threads


def run(args: argparse.Namespace) -> dict[str, Any]:
    name = args.config
    config, batch = CONFIGS[name], args.batch or BATCH[name]
    results: dict[str, Any] = {
        "config_name": name, "batch": batch, "segments": args.segments,
        "config": {**config, "recurrent_layers": list(config["recurrent_layers"])},
        "rounds": args.rounds,
        "parameters_multi_head_kv": count_parameters(_ours(config)[0]),
    }  # fmt: skip
    kwargs = dict(batch=batch, segments=args.segments, device=args.device)
    steps = {
        "minimodels": training_step(
            lambda: _ours(config, single_head_kv=True), config, **kwargs
        )
    }
    version = None if args.no_package else package_version(args.package_path)
    if version is not None:
        steps["package"] = training_step(lambda: _package(config), config, **kwargs)
    elif not args.no_package:
        print(f"{PACKAGE} is not importable: timing minimodels only")
    results.update(measure_interleaved(steps, args.rounds, args.device))
    if version is not None:
        results["package"]["version"] = version
        for key in ("wall_s", "cpu_s"):
            results[f"speedup_{key}"] = ratios(results, key)
    return results


def report(results: dict[str, Any]) -> str:
    """Parameters and tokens/s of each implementation; the per-round speed-ups."""
    lines = [f"{'implementation':<16}{'params':>12}{'tokens/s':>12}"]
    for impl in ("minimodels", "package"):
        if impl in results:
            r = results[impl]
            lines.append(f"{impl:<16}{r['parameters']:>12,}{r['tokens_per_s']:>12.0f}")
    for key in ("wall_s", "cpu_s"):
        if f"speedup_{key}" in results:
            per_round = results[f"speedup_{key}"]
            lines.append(f"ours / package speed ({key[:-2]}): median "
                         f"{statistics.median(per_round):.2f}, rounds "
                         + ", ".join(f"{x:.2f}" for x in per_round))  # fmt: skip
    return "\n".join(lines)


BENCHMARK = bench.Benchmark(
    "block_recurrent", __doc__, run, "block_recurrent_{tag}.json", add_arguments,
    toy=["--config", "toy", "--steps", "1", "--no-package"], report=report,
)  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return BENCHMARK.main(argv)


if __name__ == "__main__":
    main()
