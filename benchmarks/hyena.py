"""Hyena vs causal attention: forward+backward time and FLOPs against sequence
length, and associative recall over seeds and learning rates.

    python -m benchmarks.hyena --device cuda   # speed, 1K .. 128K tokens
    python -m benchmarks.hyena recall          # the chapter's grid (CPU, ~5 CPU-min)
    python -m benchmarks.hyena recall --toy    # a seconds-long grid for the tests
    python -m benchmarks.hyena filters         # implicit vs explicit filters

``speed`` times one ``HyenaOperator`` (order 2, implicit filters) and one
``MultiHeadAttention`` (SDPA, causal; FlashAttention on a GPU in bf16) of the
same width, each with its input and output projections, forward and backward.
It prints the ratio attention / Hyena per length, marks the crossover (the
shortest measured length from which Hyena is faster at every longer length) and
fits power laws. The Hyena paper (Poli et al., 2023, arXiv:2302.10866) reports
Hyena 2x faster than FlashAttention at 8K and 100x at 64K. ``forward_flops``
counts operations exactly instead (``FlopCounterMode`` on the meta device).

``recall`` trains one ``minimodels.lm.LM`` (width 64) per cell: a contender
(``hyena``: one layer, order 2, safari's recall filter settings; ``h3``: one
layer, chapter 3's defaults; ``attention``: one layer, 4 heads, rotary;
``attention-2``: two such layers) on associative recall (vocabulary 10, 33
tokens), at a learning rate (1e-3 or 3e-3) and a seed (0, 1, 2: the init and the
batch order): 300 AdamW steps of 32 fresh multi-query sequences. It reports
``val_acc`` on 1,000 validation questions, which ``experiments.tune`` uses to
pick each contender's learning rate, and ``test_acc`` on 1,000 other test
questions, which the chapter reports. Rows and provenance (``run_grid``) go to
``figures/data/hyena_recall_cpu.json``. ``filters`` runs the same grid for two
more Hyena layers with equal filter parameters: implicit filters of width 23
(``hyena-small``) and explicit ones (``hyena-explicit``), into
``figures/data/hyena_filters_cpu.json``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minimodels import bench, experiments
from minimodels._util import check
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
    """``bench.fwd_bwd`` of ``module`` on a random (batch n dim) input."""
    return bench.fwd_bwd(module, torch.randn(batch, n, dim, device=device, dtype=dtype))


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


# --- FLOPs: exact counts, where time is noise ---------------------------------------


def fft_flops(n_points: int, transforms: int, *, real: bool) -> int:
    """The textbook count of a radix-2 FFT of length N: 5 N log2 N real operations
    for complex input, half that for real input or output."""
    per = 5 * n_points * math.log2(n_points) / (2 if real else 1)
    return round(per) * transforms


def _fft_formula(real: bool, use_output: bool) -> Callable[..., int]:
    def formula(x_shape, dim, *args, out_shape=None, **kwargs) -> int:
        shape = out_shape if use_output else x_shape
        n_points = math.prod(shape[d] for d in dim)
        return fft_flops(n_points, math.prod(shape) // n_points, real=real)

    return formula


def forward_flops(module: nn.Module, n: int, dim: int, batch: int = 1) -> int:
    """Floating-point operations of one forward pass of ``module`` on a (batch n
    dim) input, counted by ``FlopCounterMode`` on the meta device (shapes only: no
    arithmetic is done, so any length costs nothing). The counter knows matmuls
    and convolutions; FFTs it does not, so they are added at ``fft_flops``. On
    the meta device attention takes SDPA's matmul path, so its q k^T and P v are
    counted as the two (n n d) matmuls they are, without halving for the mask."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    fft = {
        aten._fft_r2c: _fft_formula(real=True, use_output=False),
        aten._fft_c2r: _fft_formula(real=True, use_output=True),
        aten._fft_c2c: _fft_formula(real=False, use_output=False),
    }
    module = copy.deepcopy(module).to("meta")  # the caller's module is untouched
    with FlopCounterMode(display=False, custom_mapping=fft) as fc:
        module(torch.empty(batch, n, dim, device="meta"))
    return fc.get_total_flops()


# --- associative recall over seeds and learning rates ----------------------------

# (vocabulary, sequence length): 5 keys in 16 pairs and a query. A second task
# (vocabulary 20, 65 tokens) was planned; the shared 2-core machine ran out of time.
RECALL_TASKS = [(10, 33)]
# contender -> (mixer, layers); attention with one layer only on the first task
RECALL_CONTENDERS = {
    "hyena": 1, "h3": 1, "attention": 1, "attention-2": 2,
    "hyena-small": 1, "hyena-explicit": 1,
}  # fmt: skip
# implicit against explicit filters at equal filter parameters (the ``filters``
# grid): an explicit filter has N d n = 2 * 64 * 33 = 4,224 parameters, an implicit
# one of width F has 2 F^2 + 137 F (here 4,209 at F = 23)
FILTER_CONTENDERS = ["hyena-small", "hyena-explicit"]
SMALL_FILTER_ORDER = 23
TASK_CONTENDERS = {(10, 33): ["hyena", "h3", "attention", "attention-2"]}
RECALL_LRS = [1e-3, 3e-3]
RECALL_SEEDS = [0, 1, 2]
RECALL_DIM, RECALL_STEPS, RECALL_BATCH = 64, 300, 32
VAL_SEED, TEST_SEED = 1, 2  # the validation and test questions: never trained on
CELL_NAMES = ("contender", "vocab", "n", "lr", "seed", "steps", "questions", "dim")


def recall_mixer(contender: str, n: int, lr: float) -> Callable[[int], nn.Module]:
    """The mixer factory of one contender at length ``n``."""
    if contender == "hyena":  # safari's recall config: emb_dim 5, w 10, filter lr
        return partial(  # = the model's lr, fixed positional encoding
            HyenaOperator, max_len=n, emb_dim=5, sin_freq=10.0, filter_lr=lr,
            pos_emb_lr=0.0,
        )  # fmt: skip
    if contender == "hyena-small":
        return partial(
            HyenaOperator, max_len=n, emb_dim=5, sin_freq=10.0, filter_lr=lr,
            pos_emb_lr=0.0, filter_order=SMALL_FILTER_ORDER,
        )  # fmt: skip
    if contender == "hyena-explicit":
        return partial(HyenaOperator, max_len=n, filter="explicit")
    if contender == "h3":
        from minimodels.h3 import H3

        return H3  # chapter 3's defaults
    if contender.startswith("attention"):
        return partial(MultiHeadAttention, heads=4)
    raise ValueError(f"contender must be one of {sorted(RECALL_CONTENDERS)}")


def recall_data(vocab: int, n: int, questions: int) -> tuple[Callable, Any, Any]:
    """Fresh multi-query training batches, and the validation and test sets
    (``questions`` each, only the last key asked; drawn from other seeds)."""
    from minimodels.data import associative_recall

    def draw(batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        return associative_recall(batch, n, vocab, multi_query=True, seed=seed)

    val = associative_recall(questions, n, vocab, seed=VAL_SEED)
    return draw, val, associative_recall(questions, n, vocab, seed=TEST_SEED)


def build_recall_model(cell: dict[str, Any]) -> nn.Module:
    """One cell's LM, initialised from the current seed."""
    from minimodels.lm import LM

    check(
        cell["contender"] in RECALL_CONTENDERS,
        "contender: unknown " + cell["contender"],
    )
    depth = RECALL_CONTENDERS[cell["contender"]]
    mixer = recall_mixer(cell["contender"], cell["n"], cell["lr"])
    return LM(cell["vocab"], cell["dim"], depth, mixer)


def train_recall(cell: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """Train one cell's LM; returns it with its metrics (``recall_cell``'s)."""
    from minimodels.train import TrainConfig, evaluate, train

    draw, val, test = recall_data(cell["vocab"], cell["n"], cell["questions"])
    steps = cell["steps"]
    config = TrainConfig(
        steps=steps, batch_size=RECALL_BATCH, lr=cell["lr"], weight_decay=0.0,
        warmup=min(20, steps // 5), eval_every=steps, seed=cell["seed"],
        progress=False,
    )  # fmt: skip
    torch.manual_seed(cell["seed"])
    model = build_recall_model(cell)
    cpu = time.process_time()
    history = train(model, draw, val, config)
    test_loss, test_acc = evaluate(model, test, batch_size=250, batches=None)
    return model, {
        "val_acc": history.final_acc,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "cpu_s": time.process_time() - cpu,
    }


def recall_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """One grid cell: validation accuracy (chooses the lr), test accuracy."""
    return train_recall(cell)[1]


def recall_cells(
    *,
    scale: float = 1.0,
    questions: int = 1000,
    dim: int = RECALL_DIM,
    lrs: Sequence[float] = RECALL_LRS,
    seeds: Sequence[int] = RECALL_SEEDS,
    contenders: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The grid: task x contender x lr x seed, at ``scale`` x the step count
    (``contenders``: the same for every task, else each task's own)."""
    steps = max(1, round(RECALL_STEPS * scale))
    return [
        {"contender": c, "vocab": v, "n": n, "lr": lr, "seed": s, "steps": steps,
         "questions": questions, "dim": dim}
        for v, n in RECALL_TASKS for c in (contenders or TASK_CONTENDERS[v, n])
        for lr in lrs for s in seeds
    ]  # fmt: skip


def recall_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and contender: test accuracy over seeds at the lr that was best
    on the validation questions."""
    by = ("vocab", "n", "contender")
    tuned = experiments.tune(rows, select="val_acc", by=by)
    lrs = {tuple(r[k] for k in by): r["lr"] for r in tuned}
    summary = experiments.summarize(tuned, "test_acc", by=by)
    return [{**s, "lr": lrs[tuple(s[k] for k in by)]} for s in summary]


def recall_grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The cells of ``recall`` or ``filters`` (``--toy``: a seconds-long grid)."""
    toy = {"scale": 0.01, "questions": 50, "dim": 16, "lrs": [1e-3], "seeds": [0, 1]}
    size: dict[str, Any] = dict(toy) if args.toy else {}
    if args.experiment == "filters":
        size["contenders"] = FILTER_CONTENDERS
    return recall_cells(**size)


def recall_report(rows: Sequence[dict[str, Any]]) -> str:
    return "\n".join(
        f"V={r['vocab']:<3} n={r['n']:<4} {r['contender']:12s} lr {r['lr']:.0e}"
        f"  test {r['mean']:.3f} ({r['min']:.3f}-{r['max']:.3f})"
        for r in recall_table(rows)
    )


def speed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", nargs="?", default="speed", choices=["speed"])
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--dim", type=int, default=None, help="768 (cuda) / 64")
    p.add_argument("--heads", type=int, default=None, help="default dim // 64")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=list(DTYPES), default=None)
    p.add_argument("--repeats", type=int, default=5)


def speed_defaults(args: argparse.Namespace) -> argparse.Namespace:
    cuda = args.device.startswith("cuda")
    args.lengths = args.lengths or (CUDA_LENGTHS if cuda else CPU_LENGTHS)
    args.dim = args.dim or (768 if cuda else 64)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.heads = args.heads or max(1, args.dim // 64)
    return args


def plot(result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    series = {name: [(r["n"], r[f"{name}_s"]) for r in rows]
              for name in ("hyena", "attention")}  # fmt: skip
    crossover = result["crossover"]
    title = "no crossover" if crossover is None else f"crossover at n = {crossover}"
    bench.plot_loglog(series, path, xlabel="sequence length",
                      ylabel="forward+backward (s)", title=title)  # fmt: skip


SPEED = bench.Benchmark(
    "hyena", __doc__, lambda args: speed(speed_defaults(args)),
    "hyena_vs_attention_{tag}.json", speed_arguments, plot=plot,
    toy="--lengths 16 32 --dim 8 --repeats 1".split(),
)  # fmt: skip
RECALL = bench.Benchmark(
    "hyena", __doc__, recall_grid, lambda args: f"hyena_{args.experiment}_cpu.json",
    lambda p: p.add_argument("experiment", choices=["recall", "filters"]),
    cell=recall_cell, report=recall_report, device=None,
)  # fmt: skip
BENCHMARK = SPEED


def main(argv: Sequence[str] | None = None) -> Any:
    """``speed`` (the default), or the ``recall`` or ``filters`` grid."""
    given = list(sys.argv[1:] if argv is None else argv)
    grid = bool(given) and given[0] in ("recall", "filters")
    return (RECALL if grid else SPEED).main(given)


if __name__ == "__main__":
    main()
