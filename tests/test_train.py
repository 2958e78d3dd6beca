import copy
import math

import pytest
import torch
from torch import nn

from minimodels.data import associative_recall
from minimodels.lm import LM
from minimodels.optim import set_optim
from minimodels.train import (
    NonFiniteLoss,
    TrainConfig,
    evaluate,
    lr_at,
    param_groups,
    train,
)


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


def _model_with_settings() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model.register_parameter("special", nn.Parameter(torch.zeros(3)))
    set_optim(model, ["special"], lr=1e-3)
    set_optim(model[2], lr=5e-4, weight_decay=0.01)  # every parameter of a child
    return model


def _groups_by_size(model: nn.Module) -> dict[int, dict]:
    groups = param_groups(model, 0.1)
    return {
        sum(p.numel() for p in g["params"]): {
            k: v for k, v in g.items() if k != "params"
        }
        for g in groups
    }


def test_param_groups_honour_declared_settings():
    groups = _groups_by_size(_model_with_settings())
    assert groups[16] == {"weight_decay": 0.1}  # the first weight matrix
    assert groups[12] == {"weight_decay": 0.0}  # its bias and the norm
    assert groups[3] == {"lr": 1e-3, "weight_decay": 0.0}
    assert groups[10] == {"lr": 5e-4, "weight_decay": 0.01}  # the child, 8 + 2


@pytest.mark.parametrize(
    "copy_model",
    [
        copy.deepcopy,
        lambda m: m.to("meta").to_empty(device="cpu"),
        lambda m: _load_into_fresh(m),
    ],
    ids=["deepcopy", "to_empty", "state_dict"],
)
def test_declared_settings_survive_copies(copy_model):
    model = _model_with_settings()
    assert _groups_by_size(copy_model(model)) == _groups_by_size(model)


def _load_into_fresh(model: nn.Module) -> nn.Module:
    fresh = _model_with_settings()
    fresh.load_state_dict(copy.deepcopy(model.state_dict()))
    return fresh


def test_set_optim_names_a_missing_parameter():
    with pytest.raises(ValueError, match="nope"):
        set_optim(nn.Linear(2, 2), ["nope"], lr=1e-3)


def test_evaluate_counts_only_targets():
    model = LM(8, 16, 1)
    x, y = associative_recall(10, 9, 8)
    loss, acc = evaluate(model, (x, y))
    assert 0 <= acc <= 1 and loss > 0


@pytest.mark.parametrize(
    "field, value",
    [
        ("steps", 0), ("steps", 2.5), ("batch_size", 0), ("eval_every", 0),
        ("eval_batches", -1), ("warmup", -1), ("seed", -1), ("lr", 0.0),
        ("lr", math.inf), ("lr", math.nan), ("weight_decay", -0.1),
        ("weight_decay", math.inf), ("grad_clip", 0.0), ("grad_clip", -1.0),
        ("grad_clip", math.inf), ("progress", "yes"), ("steps", True),
    ],
)  # fmt: skip
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_a_diverging_loss_stops_training():
    torch.manual_seed(0)
    model = LM(8, 32, 1)
    with torch.no_grad():
        model.head.weight.fill_(math.inf)  # the first loss is not finite
    data = associative_recall(64, 9, 8, seed=0)
    config = TrainConfig(steps=5, batch_size=8, eval_every=5, progress=False)
    with pytest.raises(NonFiniteLoss, match="learning rate"):
        train(model, data, data, config)


def test_tensor_validation_sets_are_scored_whole():
    torch.manual_seed(0)
    model = LM(8, 16, 1)
    x, y = associative_recall(1000, 9, 8, seed=3)
    whole = evaluate(model, (x, y), batch_size=64, batches=None)
    by_hand = evaluate(model, (x, y), batch_size=1000, batches=1)
    assert whole == pytest.approx(by_hand)
    config = TrainConfig(steps=1, batch_size=64, eval_batches=1, progress=False)
    history = train(model, (x, y), (x, y), config)
    # eval_batches=1 would have scored 64 questions; all 1,000 are scored
    assert history.val_acc[-1] * 1000 == pytest.approx(
        round(history.val_acc[-1] * 1000)
    )


def _book_models() -> dict[str, nn.Module]:
    from minimodels.h3 import H3
    from minimodels.hyena import HyenaOperator
    from minimodels.ssm import S4D

    torch.manual_seed(0)
    return {
        "s4d": S4D(8, d_state=8),
        "h3": H3(16, d_state=8, head_dim=8),
        "hyena": HyenaOperator(8, max_len=16),
    }


@pytest.mark.parametrize("name", ["s4d", "h3", "hyena"])
def test_the_book_models_keep_their_settings_through_copies(name):
    model = _book_models()[name]
    groups = _groups_by_size(model)
    assert any("lr" in g for g in groups.values()), "no declared settings"
    fresh = _book_models()[name]
    fresh.load_state_dict(model.state_dict())
    for copy_model in (copy.deepcopy, lambda m: m.to("meta").to_empty(device="cpu")):
        assert _groups_by_size(copy_model(model)) == groups
    assert _groups_by_size(fresh) == groups


def test_s4d_trains_a_b_and_delta_at_1e_3_without_decay():
    from minimodels.ssm import S4D

    s4d = S4D(4, d_state=8)
    groups = param_groups(s4d, 0.1)
    special = next(g for g in groups if "lr" in g)
    names = {
        n for n, p in s4d.named_parameters() if any(p is q for q in special["params"])
    }
    assert names == {"log_dt", "log_A_real", "A_imag", "B"}
    assert (special["lr"], special["weight_decay"]) == (1e-3, 0.0)
