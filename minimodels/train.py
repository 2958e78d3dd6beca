"""A small, deterministic trainer that every chapter shares.

AdamW ("Decoupled Weight Decay Regularization", Loshchilov & Hutter, 2019,
arXiv:1711.05101) with linear warm-up and cosine decay, gradient clipping, a tqdm
progress bar, and evaluation of loss, accuracy and bits per token.

Parameters may have their own optimizer settings, declared by their module with
``minimodels.optim.set_optim`` (the SSMs' A, B, Δ; Hyena's filters); they get a
parameter group of their own. Otherwise matrices decay and vectors (biases,
norms) do not.

Every setting is checked when the config is made, and a loss that stops being
finite stops training with an error (a learning rate too high for the model),
instead of returning a history of NaNs.

Data is either a pair of tensors ``(x, y)`` of shape (N, L) from which batches are
drawn, or a function ``(batch_size, generator) -> (x, y)``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from minimodels._util import check, check_int, default
from minimodels.data import IGNORE
from minimodels.optim import param_groups

__all__ = [
    "TrainConfig",
    "History",
    "NonFiniteLoss",
    "train",
    "evaluate",
    "init_distributed",
    "param_groups",
    "lr_at",
]

Batch = tuple[Tensor, Tensor]
Data = Batch | Callable[[int, torch.Generator], Batch]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 20
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_batches: int = 4
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_batches"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("warmup", self.warmup, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            _check_real(name, value)
            check(value > 0, f"{name} must be > 0, got {value!r}")
        _check_real("weight_decay", self.weight_decay)
        check(
            self.weight_decay >= 0,
            f"weight_decay must be >= 0, got {self.weight_decay!r}",
        )
        check(
            isinstance(self.progress, bool),
            f"progress must be a bool, got {self.progress!r}",
        )


def _check_int(name: str, value: object, *, minimum: int) -> None:
    check_int(**{name: value})
    check(value >= minimum, f"{name} must be >= {minimum}, got {value!r}")  # type: ignore[operator]


def _check_real(name: str, value: object) -> None:
    check(
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value),
        f"{name} must be a finite number, got {value!r}",
    )


class NonFiniteLoss(ValueError):
    """The training loss became NaN or infinite (usually: the learning rate is
    too high for this model)."""


@dataclass
class History:
    """What happened during training; lists are indexed by evaluation."""

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def final_acc(self) -> float:
        return self.val_acc[-1]

    @property
    def final_loss(self) -> float:
        return self.val_loss[-1]

    @property
    def final_bits(self) -> float:
        """Validation loss in bits per token (bits per byte on a byte corpus)."""
        return self.val_loss[-1] / math.log(2)


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 10% of ``lr``."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _draw(data: Data, batch_size: int, g: torch.Generator) -> Batch:
    if callable(data):
        return data(batch_size, g)
    x, y = data
    idx = torch.randint(0, len(x), (batch_size,), generator=g)
    return x[idx], y[idx]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Data,
    batch_size: int = 64,
    batches: int | None = 4,
    seed: int = 1,
) -> tuple[float, float]:
    """Mean loss and accuracy over ``batches`` batches drawn from a function, or
    over the first ``batches`` batches of a tensor dataset (all of it when
    ``batches`` is None)."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    if callable(data):
        chunks = [data(batch_size, g) for _ in range(default(batches, 4))]
    else:
        x, y = data
        chunks = list(zip(x.split(batch_size), y.split(batch_size)))
        chunks = chunks if batches is None else chunks[:batches]
    total_loss, correct, count = 0.0, 0, 0
    for x, y in chunks:
        loss, n, c = _loss_sum(model, x, y)
        total_loss += loss.item()
        count += int(n.item())
        correct += int(c.item())
    model.train(was_training)
    return total_loss / max(count, 1), correct / max(count, 1)


def init_distributed() -> bool:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE``,
    ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` in the environment), once: gloo on
    the CPU, NCCL on GPUs. True when this process is one of several."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return dist.is_available() and dist.is_initialized()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return True


def _world() -> tuple[int, int]:
    """(rank, number of processes); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # never half a checkpoint


def train(
    model: nn.Module,
    train_data: Data,
    val_data: Data,
    config: TrainConfig = TrainConfig(),
    *,
    description: str = "train",
    checkpoint: str | Path | None = None,
) -> History:
    """Train ``model`` (whose forward maps ids to logits) and return its history.

    Batches are drawn on the CPU and moved to the model's device.

    Under ``torchrun`` (or in any initialised process group) the model is
    wrapped in ``DistributedDataParallel``: every process draws the same global
    batch of ``batch_size`` and trains on its own rows of it, and the loss is
    the mean over the whole batch's targets, so the run takes the same steps as
    one process with the same ``batch_size``. Logs and evaluation come from
    rank 0 (and are shared with the others).

    With ``checkpoint``, the model, optimizer, data generator and history are
    saved there at every evaluation, and a run that finds the file resumes from
    it: an interrupted run, resumed, ends where an uninterrupted one would.
    """
    init_distributed()
    rank, world = _world()
    check(
        config.batch_size % world == 0,
        f"batch_size ({config.batch_size}) must be divisible by the number of "
        f"processes ({world})",
    )
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98)
    )
    base_lrs = [group["lr"] for group in opt.param_groups]
    history, first, elapsed = History(), 0, 0.0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state = torch.load(path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        history, first = History(**state["history"]), state["step"]
        elapsed = history.seconds[-1] if history.seconds else 0.0
    device = next(model.parameters()).device
    start = time.perf_counter() - elapsed
    model.train()
    bar = tqdm(
        range(first, config.steps),
        desc=description,
        initial=first,
        total=config.steps,
        disable=not config.progress or rank != 0,
    )
    for step in bar:
        scale = lr_at(step, config) / config.lr
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * scale
        x, y = _draw(train_data, config.batch_size, g)  # the same on every rank
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]  # this rank's rows
        loss_sum, count, _ = _loss_sum(net, x, y)
        totals = torch.stack((loss_sum.detach(), count)).to(device)
        if world > 1:
            dist.all_reduce(totals)
        if not torch.isfinite(totals[0]):
            raise NonFiniteLoss(
                f"{description}: the loss is {totals[0].item()} at step {step} "
                f"(lr {config.lr}); try a lower learning rate"
            )
        # DDP averages gradients over processes: scale so that they are the
        # gradient of the mean over all of the batch's targets
        loss = loss_sum * world / totals[1].clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            val = _evaluate_on_rank_0(model, val_data, config, rank, world, device)
            history.step.append(step + 1)
            history.train_loss.append((totals[0] / totals[1].clamp(min=1)).item())
            history.val_loss.append(val[0])
            history.val_acc.append(val[1])
            history.seconds.append(time.perf_counter() - start)
            bar.set_postfix(loss=f"{val[0]:.3f}", acc=f"{val[1]:.3f}")
            if path is not None and rank == 0:
                _save(path, {
                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "generator": g.get_state(), "rng": torch.get_rng_state(),
                    "history": asdict(history), "step": step + 1,
                })  # fmt: skip
    return history


def _loss_sum(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Summed cross-entropy over the targets that are not -100, their count, and
    how many of them the argmax gets right."""
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    logits = model(x)
    loss = F.cross_entropy(
        logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE,
        reduction="sum",
    )  # fmt: skip
    seen = y != IGNORE
    correct = (logits.argmax(-1) == y)[seen].sum()
    return loss, seen.sum().to(loss.dtype), correct


def _evaluate_on_rank_0(
    model: nn.Module,
    val_data: Data,
    config: TrainConfig,
    rank: int,
    world: int,
    device: torch.device,
) -> tuple[float, float]:
    # a tensor validation set is scored whole: every question counts
    batches = config.eval_batches if callable(val_data) else None
    result = torch.zeros(2, device=device, dtype=torch.float64)
    if rank == 0:
        result[:] = torch.tensor(evaluate(model, val_data, config.batch_size, batches))
    if world > 1:
        dist.broadcast(result, 0)
    return result[0].item(), result[1].item()
