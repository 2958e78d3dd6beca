import math

import pytest
import torch

from minimodels import data
from minimodels.lm import LM, mixer_factory
from minimodels.optim import param_groups
from minimodels.ssm import (
    S4D,
    S4DConfig,
    S4DMixer,
    discretize_bilinear,
    discretize_zoh,
    s4d_init,
    ssm_kernel,
    ssm_kernel_naive,
    ssm_scan,
)
from minimodels.testing import assert_causal, assert_same


def random_diag(d: int, s: int, dtype=torch.complex128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    A = torch.complex(
        -torch.rand(d, s, generator=g, dtype=real) - 0.1,
        torch.randn(d, s, generator=g, dtype=real) * 5,
    )
    B = torch.randn(d, s, generator=g, dtype=dtype)
    C = torch.randn(d, s, generator=g, dtype=dtype)
    dt = torch.rand(d, generator=g, dtype=real) * 0.1 + 1e-3
    return A, B, C, dt


def test_zoh_matches_closed_form_and_matrix_exponential():
    A, B, _, dt = random_diag(3, 4)
    A_bar, B_bar = discretize_zoh(A, B, dt)
    for i in range(3):
        # ZOH of a diagonal system: Ā = expm(ΔA), B̄ = A^{-1}(Ā - I) B, entrywise.
        expm = torch.linalg.matrix_exp(dt[i] * torch.diag(A[i]))
        torch.testing.assert_close(A_bar[i], torch.diagonal(expm))
        integral = torch.linalg.solve(
            torch.diag(A[i]), (expm - torch.eye(4, dtype=A.dtype)) @ B[i]
        )
        torch.testing.assert_close(B_bar[i], integral)


def test_zoh_b_bar_is_the_integral_of_exp():
    # B̄ = ∫_0^Δ exp(A τ) dτ · B, by the trapezoid rule on a fine grid.
    A, B, _, dt = random_diag(2, 3)
    _, B_bar = discretize_zoh(A, B, dt)
    for i in range(2):
        tau = torch.linspace(0, float(dt[i]), 20001, dtype=torch.float64)
        integrand = torch.exp(A[i][:, None] * tau)
        integral = torch.trapezoid(integrand, tau, dim=-1)
        torch.testing.assert_close(B_bar[i], integral * B[i], rtol=1e-7, atol=1e-9)


def test_bilinear_matches_closed_form():
    A, B, _, dt = random_diag(3, 4)
    A_bar, B_bar = discretize_bilinear(A, B, dt)
    for i in range(3):
        eye = torch.eye(4, dtype=A.dtype)
        Ad = torch.diag(A[i])
        inv = torch.linalg.inv(eye - dt[i] / 2 * Ad)
        torch.testing.assert_close(torch.diag(A_bar[i]), inv @ (eye + dt[i] / 2 * Ad))
        torch.testing.assert_close(B_bar[i], inv @ (dt[i] * B[i]))


def test_bilinear_approaches_zoh_for_small_dt():
    A, B, _, _ = random_diag(2, 3)
    dt = torch.full((2,), 1e-4, dtype=torch.float64)
    za, zb = discretize_zoh(A, B, dt)
    ba, bb = discretize_bilinear(A, B, dt)
    torch.testing.assert_close(za, ba, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(zb, bb, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("L", [1, 7, 64, 129])
def test_vandermonde_kernel_equals_power_loop(discretization, L):
    A, B, C, dt = random_diag(3, 5, seed=L)

    def fast(A_re, A_im, dt_):
        return ssm_kernel(
            torch.complex(A_re, A_im), B, C, dt_, L, discretization=discretization
        )

    def slow(A_re, A_im, dt_):
        return ssm_kernel_naive(
            torch.complex(A_re, A_im), B, C, dt_, L, discretization=discretization
        )

    assert_same(fast, slow, [A.real, A.imag, dt], rtol=1e-9, atol=1e-10)


def test_kernel_of_one_mode_is_a_damped_cosine():
    A = torch.tensor([[complex(-0.5, 3.0)]], dtype=torch.complex128)
    B = torch.ones_like(A)
    C = torch.ones_like(A)
    dt = torch.tensor([0.1], dtype=torch.float64)
    K = ssm_kernel(A, B, C, dt, 20)[0]
    l = torch.arange(20, dtype=torch.float64)
    b_bar = (torch.exp(dt * A[0, 0]) - 1) / A[0, 0]
    expected = 2 * (b_bar * torch.exp(dt * A[0, 0] * l)).real
    torch.testing.assert_close(K, expected)
    assert K[0] > 0 and K[-1].abs() < K[0]


def test_s4d_init_values():
    real, imag = s4d_init("lin", 8)
    torch.testing.assert_close(real, torch.full((4,), -0.5))
    torch.testing.assert_close(imag, math.pi * torch.arange(4.0))
    _, imag = s4d_init("inv", 8)
    n = torch.arange(4.0)
    torch.testing.assert_close(imag, 8 / math.pi * (8 / (2 * n + 1) - 1))


def test_dt_is_log_uniform_in_range_and_A_real_negative():
    torch.manual_seed(0)
    m = S4D(2000, d_state=4, dt_min=1e-3, dt_max=1e-1)
    dt = m.dt
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1
    # log-uniform: the median sits near the geometric mean 1e-2
    assert abs(dt.log10().median().item() + 2) < 0.1
    assert (m.A.real < 0).all()
    torch.testing.assert_close(m.A.real, torch.full_like(m.A.real, -0.5))


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("L", [1, 5, 64, 127, 300])
@pytest.mark.parametrize("init", ["inv", "lin"])
def test_conv_mode_equals_recurrent_mode(dtype, rtol, L, init):
    torch.manual_seed(L)
    m = S4D(4, d_state=16, init=init).to(dtype)
    u = torch.randn(2, L, 4, dtype=dtype)
    with torch.no_grad():
        conv, rec = m(u), m.scan(u)
    scale = conv.abs().max()
    assert (conv - rec).abs().max() <= rtol * scale


def test_conv_mode_equals_recurrent_mode_at_length_1k_fp32():
    torch.manual_seed(0)
    m = S4D(8, d_state=64)
    u = torch.randn(1, 1024, 8)
    with torch.no_grad():
        conv, rec = m(u), m.scan(u)
    assert (conv - rec).abs().max() <= 1e-4 * conv.abs().max()


def test_bilinear_layer_conv_equals_recurrent():
    torch.manual_seed(0)
    m = S4D(3, d_state=8, discretization="bilinear").double()
    u = torch.randn(2, 37, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(u), m.scan(u))


def test_conv_and_recurrent_gradients_agree():
    torch.manual_seed(0)
    m = S4D(3, d_state=6).double()
    u = torch.randn(2, 19, 3, dtype=torch.float64)
    grads = []
    for fn in (m.forward, m.scan):
        m.zero_grad()
        (fn(u) * torch.arange(19.0, dtype=torch.float64)[:, None]).sum().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_gradients_reach_A_B_C_dt_D():
    torch.manual_seed(0)
    m = S4D(4, d_state=8)
    m(torch.randn(2, 33, 4)).square().sum().backward()
    for name in ("log_A_real", "A_imag", "B", "C", "log_dt", "D"):
        g = getattr(m, name).grad
        assert g is not None and g.abs().sum() > 0, name


def assert_steps_equal_forward(m, u):
    """Feeding u (b n d) one step at a time gives forward(u)."""
    state, ys = m.init_state(u.shape[0]), []
    for u_t in u.unbind(1):
        y_t, state = m.step(u_t, state)
        ys.append(y_t)
    with torch.no_grad():
        torch.testing.assert_close(torch.stack(ys, 1), m(u))


def test_step_streaming_equals_full_forward():
    torch.manual_seed(0)
    m = S4D(5, d_state=12).double()
    assert_steps_equal_forward(m, torch.randn(3, 23, 5, dtype=torch.float64))


def test_ssm_scan_continues_from_a_state():
    A, B, C, _ = random_diag(3, 4)
    A = torch.exp(A * 0.1)
    u = torch.randn(2, 20, 3, dtype=torch.float64)
    full, last = ssm_scan(A, B, C, u)
    first, mid = ssm_scan(A, B, C, u[:, :8])
    second, end = ssm_scan(A, B, C, u[:, 8:], mid)
    torch.testing.assert_close(torch.cat((first, second), 1), full)
    torch.testing.assert_close(end, last)


def test_s4d_is_causal():
    torch.manual_seed(0)
    m = S4D(4, d_state=8).double()
    assert_causal(m, torch.randn(2, 40, 4, dtype=torch.float64), [0, 1, 17, 39])


def test_bidirectional_sees_both_sides_and_matches_direct_sum():
    torch.manual_seed(0)
    m = S4D(3, d_state=8, bidirectional=True).double()
    L = 11
    u = torch.randn(2, L, 3, dtype=torch.float64)
    kf, kb = m.kernel(L), m.kernel(L, backward=True)
    expected = u * m.D
    for t in range(L):
        for s in range(L):
            if s <= t:
                expected[:, t] += kf[:, t - s] * u[:, s]
            else:
                expected[:, t] += kb[:, s - t - 1] * u[:, s]
    with torch.no_grad():
        torch.testing.assert_close(m(u), expected)
    with pytest.raises(ValueError, match="bidirectional"):
        m.scan(u)


def test_optimizer_groups_put_ssm_parameters_at_their_lr():
    m = S4DMixer(8, d_state=4, lr=2e-3)
    groups = param_groups(m, weight_decay=0.1)
    special = [g for g in groups if g.get("lr") == 2e-3]
    assert len(special) == 1 and special[0]["weight_decay"] == 0.0
    ids = {id(p) for p in special[0]["params"]}
    for p in (m.ssm.log_dt, m.ssm.log_A_real, m.ssm.A_imag, m.ssm.B):
        assert id(p) in ids
    assert id(m.ssm.C) not in ids and id(m.out.weight) not in ids


def test_the_mixer_takes_s4ds_options_and_defaults_from_one_config():
    assert S4DMixer(8).ssm.config == S4D(8).config == S4DConfig()
    m = S4DMixer(8, d_state=4, init="lin", discretization="bilinear", glu=False)
    assert m.ssm.config == S4DConfig(d_state=4, init="lin", discretization="bilinear")
    assert m.ssm.d_state == 4 and m.ssm.discretization == "bilinear" and not m.glu
    with pytest.raises(TypeError, match="'d_stat' \\(did you mean 'd_state'\\?\\)"):
        S4DMixer(8, d_stat=4)
    with pytest.raises(TypeError, match="unknown option 'dt_mn'.*S4DConfig"):
        S4D(8, dt_mn=1e-3)
    with pytest.raises(ValueError, match="bidirectional must be False in S4DMixer"):
        S4DMixer(8, bidirectional=True)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(d_state=7), "d_state"),
        (dict(d_state=0), "d_state"),
        (dict(dt_min=0.0), "dt_min"),
        (dict(dt_min=0.2, dt_max=0.1), "dt_min"),
        (dict(init="legs"), "init"),
        (dict(discretization="euler"), "discretization"),
        (dict(lr=-1.0), "lr"),
    ],
)
def test_bad_config_is_an_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        S4D(4, **kwargs)


def test_bad_inputs_are_errors():
    m = S4D(4, d_state=4)
    with pytest.raises(ValueError, match="u must have shape"):
        m(torch.randn(4, 10))
    with pytest.raises(ValueError, match="last axis"):
        m(torch.randn(1, 10, 5))
    with pytest.raises(ValueError, match="u_t must have shape"):
        m.step(torch.randn(1, 3, 4), m.init_state(1))
    A, B, C, dt = random_diag(2, 3)
    with pytest.raises(ValueError, match="A must be complex"):
        ssm_kernel(A.real, B, C, dt, 5)
    with pytest.raises(ValueError, match="L must be"):
        ssm_kernel(A, B, C, dt, 0)
    with pytest.raises(ValueError, match="dt must"):
        discretize_zoh(A, B, dt[:1])


def test_integer_inputs_are_refused_by_name():
    m = S4D(4, d_state=4)
    ints = torch.ones(1, 10, 4, dtype=torch.long)
    for fn in (m.forward, m.scan):
        with pytest.raises(ValueError, match="u must be a floating-point tensor"):
            fn(ints)
    with pytest.raises(ValueError, match="u_t must be a floating-point tensor"):
        m.step(ints[:, 0], m.init_state(1))
    A_bar, B_bar = m.discrete()
    with pytest.raises(ValueError, match="u must be a floating-point tensor"):
        ssm_scan(A_bar, B_bar, A_bar, ints)


def test_empty_sequences_are_refused_by_name():
    m = S4D(4, d_state=4)
    for fn in (m.forward, m.scan):
        with pytest.raises(ValueError, match="u must hold at least one position"):
            fn(torch.randn(2, 0, 4))


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_layer_is_refused_with_a_clear_error(dtype):
    m = S4D(4, d_state=4).to(dtype)
    u = torch.randn(1, 8, 4, dtype=dtype)
    for call in (lambda: m(u), lambda: m.scan(u), lambda: m.kernel(8)):
        with pytest.raises(ValueError, match="float32 or float64, got torch"):
            call()
    with pytest.raises(ValueError, match="complex64 or complex128"):
        A = torch.full((1, 2), complex(-0.5, 1.0)).to(torch.complex32)
        ssm_kernel(A, A, A, torch.ones(1, dtype=dtype), 4)


def test_float32_layer_takes_half_inputs_and_returns_their_dtype():
    torch.manual_seed(0)
    m = S4D(4, d_state=8)
    u = torch.randn(2, 16, 4)
    with torch.no_grad():
        y = m(u.bfloat16())
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), m(u), rtol=0.05, atol=0.05)


def test_mixer_in_lm_is_causal_and_generates_recurrently():
    torch.manual_seed(0)
    model = LM(16, 32, 2, mixer_factory("s4d", d_state=8)).double().eval()
    assert isinstance(model.blocks[0].mixer, S4DMixer)
    assert model.recurrent
    assert_causal(model, torch.randint(0, 16, (2, 12)), positions=[1, 6, 11])
    prompt = torch.randint(0, 16, (2, 5))
    fast = model.generate(prompt, 7, temperature=0, recurrent=True)
    slow = model.generate(prompt, 7, temperature=0, recurrent=False)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("glu", [True, False])
def test_mixer_step_equals_forward(glu):
    torch.manual_seed(0)
    m = S4DMixer(6, d_state=8, glu=glu).double()
    assert_steps_equal_forward(m, torch.randn(2, 9, 6, dtype=torch.float64))


def test_moving_average_task_kernel_is_a_one_mode_ssms():
    """data.moving_average_sign's closed-form kernel is the ZOH kernel of the SSM
    A = -1, B = 1, C = 1 with step 1/tau: its answers are an SSM's output."""
    one = torch.full((1, 1), complex(-1.0, 0.0), dtype=torch.complex128)
    tau, n = 20.0, 301
    dt = torch.tensor([1.0 / tau], dtype=torch.float64)
    C = torch.full_like(one, 0.5)  # K̄ = 2 Re(C B̄ Ā^l): C = 1/2 makes it B̄ Ā^l
    K = ssm_kernel(one, torch.ones_like(one), C, dt, n)[0]
    x, y = data.moving_average_sign(6, n, tau=tau, seed=3)
    ema = torch.stack([(K[: k + 1].flip(0) * (2 * x[:, : k + 1] - 1)).sum(1)
                       for k in range(n)], 1)  # fmt: skip
    assert torch.equal((ema > 0).long(), y)


def test_longrange_benchmark_runs_at_toy_size_and_reproduces(tmp_path):
    from benchmarks import ssm_longrange
    from minimodels import experiments

    out = tmp_path / "grid.json"
    rows = ssm_longrange.main(["--toy", "--out", str(out)])
    assert len(rows) == 2 * 2 * 2  # contenders x seeds x learning rates
    stored = experiments.load(out)
    assert stored["rows"] == rows and stored["provenance"]["threads"] == 1
    for r in rows:
        assert 0 <= r["val_acc"] <= 1 and 0 <= r["test_acc"] <= 1
        assert r["parameters"] > 0
    sizes = {r["contender"]: r["parameters"] for r in rows}
    assert abs(sizes["s4d"] - sizes["attention"]) < 0.1 * sizes["attention"]
    # a cell re-run on the same machine is the same run
    row, live = experiments.spot_check(ssm_longrange.run_cell, rows,
                                       ssm_longrange.CELL_NAMES)  # fmt: skip
    assert live["val_acc"] == row["val_acc"] and live["test_acc"] == row["test_acc"]
