import math

import pytest
import torch
from torch import nn

from minimodels.data import associative_recall
from minimodels.lm import LM
from minimodels.train import TrainConfig, evaluate, lr_at, param_groups, train


def _tiny_run(seed=0):
    torch.manual_seed(seed)
    model = LM(8, 32, 1)
    data = associative_recall(256, 9, 8, seed=0)
    config = TrainConfig(steps=40, batch_size=32, eval_every=20, progress=False)
    return model, train(model, data, data, config)


def test_training_lowers_the_loss():
    model, history = _tiny_run()
    assert history.step == [20, 40]
    assert history.val_loss[-1] < math.log(4)  # below chance over the 4 values
    assert len(history.seconds) == 2 and history.seconds[-1] > 0


def test_training_is_deterministic():
    _, a = _tiny_run()
    _, b = _tiny_run()
    assert a.val_loss == b.val_loss


def test_schedule_warms_up_then_decays_to_ten_percent():
    config = TrainConfig(steps=100, lr=1.0, warmup=10)
    assert lr_at(0, config) == pytest.approx(0.1)
    assert lr_at(9, config) == pytest.approx(1.0)
    assert lr_at(10, config) == pytest.approx(1.0)
    assert lr_at(100, config) == pytest.approx(0.1)


def test_param_groups_honour_optim_attribute():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    special = nn.Parameter(torch.zeros(3))
    special._optim = {"lr": 1e-3, "weight_decay": 0.0}
    model.register_parameter("special", special)
    groups = param_groups(model, 0.1)
    by_size = {sum(p.numel() for p in g["params"]): g for g in groups}
    assert by_size[16]["weight_decay"] == 0.1  # the weight matrix
    assert by_size[12]["weight_decay"] == 0.0  # bias and norm
    assert by_size[3] == {"params": [special], "lr": 1e-3, "weight_decay": 0.0}


def test_evaluate_counts_only_targets():
    model = LM(8, 16, 1)
    x, y = associative_recall(10, 9, 8)
    loss, acc = evaluate(model, (x, y))
    assert 0 <= acc <= 1 and loss > 0


def test_bad_config():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
