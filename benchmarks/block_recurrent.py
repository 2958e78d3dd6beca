"""Training throughput of the Block-Recurrent Transformer: tokens per second.

One training step = the recurrent wrapper's loss over ``--segments`` segments of
``max_seq_len`` tokens (memories and states carried), backward, AdamW step. The
model is the seed README's configuration (dim 512, depth 6, 8 heads of 64, blocks
of 512, 512 state vectors, one recurrent layer, vocabulary 20000), with
single-head keys/values so that it has the seed package's parameter count.

If the PyPI package ``block-recurrent-transformer-pytorch`` can be imported (e.g.
installed with ``pip install --target /tmp/brt block-recurrent-transformer-pytorch
beartype --no-deps`` and ``--package-path /tmp/brt``), it is measured in the same
run at the same configuration; otherwise only ours is recorded.

    python -m benchmarks.block_recurrent --out figures/data/block_recurrent_cpu.json
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from minimodels import bench
from minimodels.block_recurrent import BlockRecurrentTransformer, RecurrentTrainWrapper
from minimodels.lm import count_parameters

README_CONFIG = dict(
    num_tokens=20000, dim=512, depth=6, dim_head=64, heads=8, max_seq_len=1024,
    block_width=512, num_state_vectors=512, recurrent_layers=(4,),
    use_compressed_mem=False, compressed_mem_factor=4, use_flash_attn=True,
)  # fmt: skip
TOY_CONFIG = dict(
    README_CONFIG, num_tokens=256, dim=32, depth=2, dim_head=16, heads=2,
    max_seq_len=32, block_width=16, num_state_vectors=8, recurrent_layers=(1,),
)  # fmt: skip


def _ours(config: dict[str, Any]) -> tuple[nn.Module, Callable[[Tensor], Tensor]]:
    model = BlockRecurrentTransformer(**config, single_head_kv=True)
    return model, RecurrentTrainWrapper(model)


def _package(config: dict[str, Any]) -> tuple[nn.Module, Callable[[Tensor], Tensor]]:
    brt = importlib.import_module("block_recurrent_transformer_pytorch")
    model = brt.BlockRecurrentTransformer(**config)
    return model, brt.RecurrentTrainerWrapper(model)


def _package_available(path: str | None) -> bool:
    if path and path not in sys.path:
        sys.path.append(path)
    try:
        importlib.import_module("block_recurrent_transformer_pytorch")
    except ImportError:
        return False
    return True


def training_step(
    build: Callable[[dict[str, Any]], tuple[nn.Module, Callable[[Tensor], Tensor]]],
    config: dict[str, Any], *, batch: int, segments: int, device: str,
) -> tuple[Callable[[], None], int, int]:  # fmt: skip
    """A closure running one training step, its tokens and the parameter count."""
    torch.manual_seed(0)
    model, wrapper = build(config)
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
    steps: dict[str, tuple[Callable[[], None], int, int]], repeats: int, device: str
) -> dict[str, dict[str, float]]:
    """Time the implementations in turn, round after round, so that a busy
    machine slows them alike; report the median and min seconds per step."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step, _, _ in steps.values():
        step()  # warm-up
    for _ in range(repeats):
        for name, (step, _, _) in steps.items():
            times[name].append(bench.time_fn(step, warmup=0, repeats=1,
                                             device=device)["median_s"])  # fmt: skip
    out = {}
    for name, (_, tokens, params) in steps.items():
        median = statistics.median(times[name])
        out[name] = {
            "parameters": params, "tokens_per_step": tokens,
            "tokens_per_s": tokens / median, "median_s": median,
            "min_s": min(times[name]),
        }  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--toy", action="store_true", help="a tiny config (tests)")
    parser.add_argument("--package-path", default=None)
    parser.add_argument("--no-package", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TOY_CONFIG if args.toy else README_CONFIG
    results: dict[str, Any] = {"config": {**config}}
    results["config"]["recurrent_layers"] = list(config["recurrent_layers"])
    results.update(batch=args.batch, segments=args.segments)
    kwargs = dict(batch=args.batch, segments=args.segments, device=args.device)
    steps = {"minimodels": training_step(_ours, config, **kwargs)}
    if not args.no_package and _package_available(args.package_path):
        steps["package"] = training_step(_package, config, **kwargs)
    results.update(measure_interleaved(steps, args.steps, args.device))
    if "package" in results:
        brt = importlib.import_module("block_recurrent_transformer_pytorch")
        version = getattr(brt, "__version__", None)
        try:
            from importlib.metadata import version as dist_version

            version = dist_version("block-recurrent-transformer-pytorch")
        except Exception:
            pass
        results["package"]["version"] = version
    print(f"{'implementation':<16}{'params':>12}{'tokens/s':>12}{'ratio':>8}")
    base = results.get("package", results["minimodels"])["tokens_per_s"]
    for name in ("package", "minimodels"):
        if name in results:
            r = results[name]
            ratio = r["tokens_per_s"] / base
            print(
                f"{name:<16}{r['parameters']:>12,}{r['tokens_per_s']:>12.0f}{ratio:>8.2f}"
            )
    if args.out:
        bench.save_json(results, args.out, device=args.device)
    return results


if __name__ == "__main__":
    main()
