import pytest
import torch

from minimodels.conv import ShortConv, toeplitz
from minimodels.h3 import H3, ShiftSSM, h3_conv, h3_matrix, h3_reference
from minimodels.lm import LM, mixer_factory
from minimodels.testing import assert_causal, assert_same


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize(
    "b, c, n, m, head_dim", [(2, 4, 8, 3, 1), (1, 6, 13, 5, 2), (3, 8, 7, 7, 4)]
)
def test_fft_path_equals_toeplitz_reference(b, c, n, m, head_dim):
    h = c // head_dim
    q, k, v = rand(b, c, n, seed=1), rand(b, c, n, seed=2), rand(b, c, n, seed=3)
    phi, psi, D = rand(c, m, seed=4), rand(h, n, seed=5), rand(h, seed=6)
    assert_same(
        lambda *a: h3_conv(*a, head_dim),
        lambda *a: h3_reference(*a, head_dim),
        [q, k, v, phi, psi, D],
        rtol=1e-9,
        atol=1e-9,
    )


def test_toeplitz_is_lower_triangular_with_the_filter_on_its_diagonals():
    h = torch.tensor([[1.0, 2.0, 3.0]])
    T = toeplitz(h, 4)[0]
    expected = torch.tensor(
        [[1, 0, 0, 0], [2, 1, 0, 0], [3, 2, 1, 0], [0, 3, 2, 1]], dtype=T.dtype
    )
    assert torch.equal(T, expected)


def test_h3_matrix_form_and_hyena_form():
    """y = D_q S_psi D_{S_phi k} v = D_q S_psi D_v S_phi k for head dim 1."""
    b, c, n = 2, 3, 9
    q, k, v = rand(b, c, n, seed=1), rand(b, c, n, seed=2), rand(b, c, n, seed=3)
    phi, psi, D = rand(c, 4, seed=4), rand(c, n, seed=5), rand(c, seed=6)
    y = h3_conv(q, k, v, phi, psi, D, 1)
    M = h3_matrix(q, k, phi, psi, D)
    torch.testing.assert_close(torch.einsum("bcts,bcs->bct", M, v), y)
    assert torch.all(M.triu(1) == 0)  # causal
    S_phi, S_psi = (
        toeplitz(phi, n),
        toeplitz(psi, n) + torch.diag_embed(D[:, None].expand(c, n)),
    )
    hyena = q * torch.einsum("cts,bcs->bct", S_psi, v * (S_phi @ k[..., None])[..., 0])
    torch.testing.assert_close(hyena, y)


def test_shift_ssm_is_a_short_conv_without_bias_and_its_step_agrees():
    torch.manual_seed(0)
    shift = ShiftSSM(5, 4).double()
    conv = ShortConv(5, kernel_size=4).double()
    with torch.no_grad():
        conv.conv.weight.copy_(shift.kernel().flip(-1)[:, None])
        conv.conv.bias.zero_()
    u = rand(2, 5, 11)
    torch.testing.assert_close(shift(u), conv(u))
    state, ys = shift.init_state(2), []
    for t in range(11):
        y, state = shift.step(u[..., t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, -1), shift(u))


def test_shift_ssm_state_holds_the_last_inputs_newest_first():
    shift = ShiftSSM(1, 3)
    state = shift.init_state(1)
    for value in (1.0, 2.0, 3.0, 4.0):
        _, state = shift.step(torch.tensor([[value]]), state)
    assert state.tolist() == [[[4.0, 3.0, 2.0]]]


@pytest.mark.parametrize(
    "head_dim, n, shift_size", [(1, 9, None), (2, 12, 3), (4, 5, 8)]
)
def test_convolution_mode_equals_recurrent_mode(head_dim, n, shift_size):
    torch.manual_seed(0)
    mixer = H3(8, d_state=6, head_dim=head_dim, shift_size=shift_size).double()
    x = rand(3, n, 8)
    state, ys = mixer.init_state(3), []
    for t in range(n):
        y, state = mixer.step(x[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), mixer(x), rtol=1e-9, atol=1e-9)


def test_gradients_flow_to_every_parameter():
    torch.manual_seed(0)
    mixer = H3(8, d_state=4, head_dim=2)
    mixer(torch.randn(2, 7, 8)).square().sum().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("head_dim", [1, 4])
def test_h3_is_causal(head_dim):
    torch.manual_seed(0)
    mixer = H3(8, d_state=4, head_dim=head_dim).double()
    assert_causal(mixer, rand(2, 10, 8), positions=[0, 3, 9])


def test_shapes_and_sizes():
    mixer = H3(12, d_state=8, head_dim=3)
    assert mixer.heads == 4 and mixer.ssm.d_model == 4
    assert mixer.shift.size == 8
    assert mixer(torch.randn(2, 5, 12)).shape == (2, 5, 12)
    assert mixer(torch.randn(1, 1, 12)).shape == (1, 1, 12)  # n < shift size


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="head_dim"):
        H3(10, head_dim=3)
    with pytest.raises(ValueError, match="d_state"):
        H3(8, d_state=0)
    with pytest.raises(ValueError, match="shift_size"):
        H3(8, shift_size=0)
    with pytest.raises(ValueError, match="dim"):
        H3(0)
    mixer = H3(8, d_state=4)
    with pytest.raises(ValueError, match=r"x must have shape \(b n c\)"):
        mixer(torch.randn(5, 8))
    with pytest.raises(ValueError, match="8 channels"):
        mixer(torch.randn(1, 5, 6))
    with pytest.raises(ValueError, match=r"x must have shape \(b c\)"):
        mixer.step(torch.randn(1, 1, 8), mixer.init_state(1))
    q = torch.randn(1, 6, 4)
    with pytest.raises(ValueError, match="head_dim"):
        h3_conv(q, q, q, torch.randn(6, 2), torch.randn(1, 4), torch.randn(1), 4)
    with pytest.raises(ValueError, match="same shape"):
        h3_conv(
            q, q, q[..., :3], torch.randn(6, 2), torch.randn(6, 4), torch.ones(6), 1
        )


def test_h3_in_the_language_model():
    torch.manual_seed(0)
    model = LM(16, 16, 2, mixer_factory("h3", d_state=8, head_dim=2)).double().eval()
    ids = torch.randint(0, 16, (2, 9))
    assert model(ids).shape == (2, 9, 16)
    assert model.recurrent
    assert_causal(model, ids, positions=[2, 8])
    prompt = ids[:, :4]
    fast = model.generate(prompt, 6, temperature=0, recurrent=True)
    slow = model.generate(prompt, 6, temperature=0, recurrent=False)
    assert torch.equal(fast, slow) and fast.shape == (2, 10)


def test_h3_lm_learns_a_little():
    from minimodels.data import associative_recall
    from minimodels.train import TrainConfig, train

    torch.manual_seed(0)
    data = associative_recall(256, 9, 8, seed=0)
    model = LM(8, 16, 1, mixer_factory("h3", d_state=8))
    config = TrainConfig(steps=30, batch_size=32, eval_every=30, progress=False)
    history = train(model, data, data, config)
    assert history.final_loss < 2.0  # below ln 8 = 2.08, chance


def test_benchmark_runs_at_toy_size(tmp_path):
    import json

    from benchmarks import h3 as bench_h3

    out, fig = tmp_path / "h3.json", tmp_path / "h3.png"
    argv = "--lengths 16 32 --dim 8 --d-state 4 --tokens 64 --repeats 1"
    bench_h3.main([*argv.split(), "--out", str(out), "--plot", str(fig)])
    data = json.loads(out.read_text())
    rows = data["results"]["rows"]
    assert [(r["n"], r["batch"]) for r in rows] == [(16, 4), (32, 2)]
    assert all(
        r["h3_tokens_per_s"] > 0 and r["attention_tokens_per_s"] > 0 for r in rows
    )
    assert "environment" in data and fig.exists()
    assert "h3_per_token_exponent" in data["results"]
