"""Training beyond one process: torchrun with 2 CPU processes (gloo) takes the
same steps as one process with the same global batch, and a checkpointed run
that is interrupted and resumed ends where an uninterrupted one does."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minimodels.data import associative_recall
from minimodels.lm import LM
from minimodels.train import TrainConfig, train

CONFIG = dict(steps=12, batch_size=16, lr=3e-3, warmup=2, eval_every=6)
SCRIPT = """
import json, sys, torch
from minimodels.data import associative_recall
from minimodels.lm import LM
from minimodels.train import TrainConfig, train

torch.set_num_threads(1)
torch.manual_seed(0)
model = LM(8, 32, 2)
data = associative_recall(256, 9, 8, multi_query=True, seed=0)
val = associative_recall(100, 9, 8, seed=1)
history = train(model, data, val, TrainConfig(progress=False, **{config}))
if torch.distributed.get_rank() == 0:
    json.dump({{"train_loss": history.train_loss, "val_loss": history.val_loss}},
              open(sys.argv[1], "w"))
"""


def _one_process() -> dict:
    torch.manual_seed(0)
    model = LM(8, 32, 2)
    data = associative_recall(256, 9, 8, multi_query=True, seed=0)
    val = associative_recall(100, 9, 8, seed=1)
    history = train(model, data, val, TrainConfig(progress=False, **CONFIG))
    return {"train_loss": history.train_loss, "val_loss": history.val_loss}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_match_one(tmp_path):
    script, out = tmp_path / "run.py", tmp_path / "losses.json"
    script.write_text(SCRIPT.format(config=repr(CONFIG)))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
         str(script), str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(out.read_text())
    one = _one_process()
    assert len(two["train_loss"]) == len(one["train_loss"]) == 2
    for key in ("train_loss", "val_loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-4), key


def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    config = TrainConfig(steps=40, batch_size=16, eval_every=10, progress=False)
    val = associative_recall(100, 9, 8, seed=1)

    def data_until(stop: int):
        calls = {"n": 0}

        def draw(batch_size, g):
            calls["n"] += 1
            if calls["n"] > stop:
                raise KeyboardInterrupt  # the machine went away
            seed = int(torch.randint(1 << 30, (1,), generator=g))
            return associative_recall(batch_size, 9, 8, multi_query=True, seed=seed)

        return draw

    torch.manual_seed(0)
    whole = train(LM(8, 32, 1), data_until(10**9), val, config)

    checkpoint = tmp_path / "run.pt"
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train(LM(8, 32, 1), data_until(25), val, config, checkpoint=checkpoint)
    assert torch.load(checkpoint, weights_only=False)["step"] == 20
    torch.manual_seed(123)  # a fresh model: everything comes from the checkpoint
    resumed = train(LM(8, 32, 1), data_until(10**9), val, config,
                    checkpoint=checkpoint)  # fmt: skip
    assert resumed.step == whole.step == [10, 20, 30, 40]
    assert resumed.val_loss == pytest.approx(whole.val_loss, rel=1e-6)
    assert resumed.train_loss == pytest.approx(whole.train_loss, rel=1e-6)


def test_batch_must_split_over_the_processes(monkeypatch):
    import minimodels.train as train_module

    monkeypatch.setattr(train_module, "_world", lambda: (0, 3))
    monkeypatch.setattr(train_module, "init_distributed", lambda: True)
    data = associative_recall(32, 9, 8)
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        train(LM(8, 16, 1), data, data, TrainConfig(batch_size=16, progress=False))


def test_readme_shows_the_torchrun_command():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "torchrun --nproc-per-node" in readme
