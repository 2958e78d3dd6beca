"""S4D's random-A initialisation and the init benchmark (chapter 2)."""

import math

import pytest
import torch

from minimodels.ssm import INITS, S4D, s4d_init


def test_random_init_is_lins_range_at_random_places():
    torch.manual_seed(0)
    N, channels = 16, 2000
    real, imag = s4d_init("random", N, channels=channels)
    assert real.shape == imag.shape == (channels, N // 2)
    assert (real == -0.5).all()
    top = math.pi * N / 2  # pi (N/2) u, u ~ U[0, 1): S4D-Lin's range, pi n < top
    assert imag.min() >= 0 and imag.max() < top
    u = (imag / top).flatten().double()  # 16,000 draws of U[0, 1)
    assert abs(u.mean().item() - 0.5) < 0.01  # standard error 0.0023
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(u.quantile(q).item() - q) < 0.02
    assert not torch.equal(imag[0], imag[1])  # each channel draws its own
    _, lin = s4d_init("lin", N)
    assert not torch.allclose(imag.sort(-1).values[0], lin)  # not S4D-Lin's grid


def test_random_init_follows_the_global_seed_and_the_layer_uses_it():
    torch.manual_seed(3)
    _, drawn = s4d_init("random", 8, channels=5)
    torch.manual_seed(3)
    layer = S4D(5, d_state=8, init="random")
    torch.testing.assert_close(layer.A.imag, drawn)
    torch.testing.assert_close(layer.A.real, torch.full((5, 4), -0.5))
    torch.manual_seed(3)
    assert torch.equal(s4d_init("random", 8)[1], drawn[0])  # (s,) without channels


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_deterministic_inits_draw_nothing_and_repeat_over_channels(init):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    real, imag = s4d_init(init, 8, channels=3)
    assert torch.equal(torch.get_rng_state(), before)  # earlier layers reproduce
    one_real, one_imag = s4d_init(init, 8)
    assert torch.equal(real, one_real.expand(3, 4))
    assert torch.equal(imag, one_imag.expand(3, 4))


def test_unknown_init_is_refused_by_name():
    assert "random" in INITS
    with pytest.raises(ValueError, match="init must be one of"):
        s4d_init("rand", 8)
    with pytest.raises(ValueError, match="init must be one of"):
        S4D(4, d_state=8, init="legs")


def test_init_benchmark_runs_at_toy_size_and_reproduces(tmp_path):
    from benchmarks import ssm_init, ssm_longrange
    from minimodels import experiments

    out = tmp_path / "grid.json"
    rows = ssm_init.main(["--toy", "--out", str(out)])
    assert len(rows) == 3 * 2  # inits x seeds at one learning rate
    assert sorted({r["init"] for r in rows}) == sorted(ssm_init.INITS)
    stored = experiments.load(out)
    assert stored["rows"] == rows and stored["provenance"]["threads"] == 1
    for r in rows:
        assert 0 <= r["val_acc"] <= 1 and 0 <= r["test_acc"] <= 1
    assert len({r["parameters"] for r in rows}) == 1  # the same model each time
    row, live = experiments.spot_check(ssm_init.run_cell, rows, ssm_init.CELL_NAMES)
    assert live["val_acc"] == row["val_acc"] and live["test_acc"] == row["test_acc"]
    # an "inv" cell is the long-range grid's S4D cell, which has no "init" key:
    # the option left the committed long-range rows as they were
    inv = next(r for r in rows if r["init"] == "inv")
    plain = {k: inv[k] for k in ssm_longrange.CELL_NAMES}
    again = ssm_longrange.run_cell(plain)
    assert (again["val_acc"], again["test_acc"]) == (inv["val_acc"], inv["test_acc"])
