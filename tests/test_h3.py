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


@pytest.mark.parametrize("head_dim,n", [(1, 9), (4, 9), (4, 3)])
def test_layer_matrix_times_v_is_the_layer(head_dim, n):
    """H3.matrix per head, applied to the values, reproduces H3.forward, with the
    kernels H3.kernels returns (n = 3 is shorter than the shift filter)."""
    torch.manual_seed(0)
    mixer = H3(8, d_state=4, head_dim=head_dim).double()
    x = rand(2, n, 8, seed=7)
    M = mixer.matrix(x)
    assert M.shape == (2, 8 // head_dim, n, n) and torch.all(M.triu(1) == 0)
    v = mixer.to_qkv(x).chunk(3, dim=-1)[2]  # (b n c)
    v = v.reshape(2, n, 8 // head_dim, head_dim)  # (b n h d)
    y = mixer.to_out(torch.einsum("bhts,bshd->bthd", M, v).reshape(2, n, 8))
    torch.testing.assert_close(y, mixer(x))
    phi, psi = mixer.kernels(n)
    assert phi.shape == (8, min(4, n)) and psi.shape == (8 // head_dim, n)
    torch.testing.assert_close(phi, mixer.shift.kernel()[:, :n])


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


def test_h3_lm_learns_recall_beyond_what_value_counts_allow():
    """Held-out recall accuracy far above the best answer that ignores which key
    was paired with which value: the most frequent value in the context (the
    query picks a pair uniformly, so that guess scores E[max count / pairs])."""
    from minimodels.data import associative_recall
    from minimodels.train import TrainConfig, train

    vocab, n = 8, 13  # 4 keys, 4 values, 6 pairs and the query
    train_set = associative_recall(2000, n, vocab, multi_query=True, seed=0)
    test_set = associative_recall(1000, n, vocab, seed=2)
    x, _ = test_set
    values = x[:, :-1].reshape(len(x), -1, 2)[..., 1]  # (N pairs)
    counts = torch.stack([(values == v).sum(1) for v in range(vocab // 2, vocab)])
    no_binding = (counts.max(0).values / values.shape[1]).mean().item()
    assert 0.55 < no_binding < 0.7  # measured 0.619
    torch.manual_seed(0)
    model = LM(vocab, 32, 2, mixer_factory("h3", d_state=8, head_dim=8))
    config = TrainConfig(
        steps=150, batch_size=32, lr=1e-2, warmup=10, weight_decay=0.0,
        eval_every=150, progress=False,
    )  # fmt: skip
    history = train(model, train_set, test_set, config)
    assert history.final_acc >= no_binding + 0.2  # measured 0.905 (seed 0)


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
    for r in rows:
        assert r["h3_ops"] > r["attention_ops"] > 0 and r["h3_bytes"] > 0


def test_benchmark_counts_attention_flops_by_the_closed_form():
    """Projections: 2 flops per multiply-add, forward and two backward products
    (24 T c^2 for Linear(c, 3c) and Linear(c, c)); SDPA: 4 b n^2 c forward and
    10 b n^2 c backward (the scores recomputed, four products)."""
    from benchmarks import h3 as bench_h3

    torch.manual_seed(0)
    pair = bench_h3.make_pair(16, heads=2, head_dim=1, d_state=8)
    b, n, c = 3, 24, 16
    counted = bench_h3.counts(pair["attention"], b, n, c)
    assert counted["flops"] == 24 * b * n * c * c + 14 * b * n * n * c
    h3 = bench_h3.counts(pair["h3"], b, n, c)
    assert h3["flops"] > 24 * b * n * c * c  # projections plus FFTs
    assert bench_h3.counts(pair["h3"], b, n, c) == h3  # exact: the same twice


def test_recall_grid_runs_at_toy_size_and_resumes(tmp_path):
    from benchmarks import h3_recall
    from minimodels import experiments

    out = tmp_path / "grid.json"
    argv = ["--toy", "--contenders", "attention", "h3", "--lrs", "1e-3", "3e-3",
            "--seeds", "0", "--out", str(out)]  # fmt: skip
    rows = h3_recall.main(argv)
    assert len(rows) == 4 and {r["contender"] for r in rows} == {"attention", "h3"}
    assert all(0 <= r["val_acc"] <= 1 and 0 <= r["test_acc"] <= 1 for r in rows)
    order = [(r["contender"], r["lr"]) for r in rows]  # H3 first, lr 1e-3 last
    h3_first = [("h3", 3e-3), ("attention", 3e-3), ("h3", 1e-3), ("attention", 1e-3)]
    assert order == h3_first
    stored = experiments.load(out)
    assert stored["provenance"]["command"].startswith("python -m benchmarks.h3_recall")
    table = h3_recall.table(stored["rows"])
    assert {t["contender"] for t in table} == {"attention", "h3"}
    assert all(t["seeds"] == [0] and t["lr"] in (1e-3, 3e-3) for t in table)
    again = h3_recall.main(argv)  # resumes: nothing is retrained
    assert [r["test_acc"] for r in again] == [r["test_acc"] for r in rows]


# --- the authors' choices: bilinear discretization, a trainable shift B ---------


def test_diagonal_ssm_is_bilinear_by_default_and_equals_the_closed_form():
    """K_l = 2 Re sum_n C_n Bbar_n Abar_n^l with the bilinear (Tustin) transform
    Abar = (1 + dA/2) / (1 - dA/2), Bbar = d B / (1 - dA/2), as SSKernelDiag."""
    torch.manual_seed(0)
    mixer = H3(6, d_state=8, head_dim=2).double()
    assert mixer.ssm.discretization == "bilinear"
    ssm, L = mixer.ssm, 17
    dA = ssm.dt[:, None] * ssm.A  # (h s)
    A_bar = (1 + dA / 2) / (1 - dA / 2)
    B_bar = ssm.dt[:, None] * torch.view_as_complex(ssm.B) / (1 - dA / 2)
    C = torch.view_as_complex(ssm.C[0])
    closed = torch.stack(
        [2 * (C * B_bar * A_bar**lag).sum(-1).real for lag in range(L)], -1
    )
    torch.testing.assert_close(ssm.kernel(L), closed, rtol=1e-10, atol=1e-12)


def test_zoh_is_an_option_and_changes_the_output_for_the_same_weights():
    torch.manual_seed(0)
    bilinear = H3(8, d_state=16, head_dim=2).double()
    zoh = H3(8, d_state=16, head_dim=2, discretization="zoh").double()
    zoh.load_state_dict(bilinear.state_dict())
    assert zoh.ssm.discretization == "zoh"
    x = rand(2, 64, 8)
    gap = (zoh(x) - bilinear(x)).norm() / bilinear(x).norm()
    assert gap > 0.05  # the same weights, a different model
    with pytest.raises(ValueError, match="discretization"):
        H3(8, discretization="euler")


def test_shift_ssm_kernel_is_C_times_shift_powers_times_B_for_any_B():
    torch.manual_seed(0)
    c, m = 3, 5
    shift = ShiftSSM(c, m).double()
    assert torch.equal(shift.B, torch.eye(m, dtype=shift.B.dtype)[0].expand(c, m))
    with torch.no_grad():
        shift.B.copy_(rand(c, m, seed=7))
    S = torch.diag(torch.ones(m - 1, dtype=torch.float64), -1)  # shifts down
    powers = [torch.linalg.matrix_power(S, lag) for lag in range(m)]
    closed = torch.stack(
        [torch.einsum("ci,ij,cj->c", shift.C, P, shift.B) for P in powers], -1
    )
    closed[:, 0] += shift.D
    torch.testing.assert_close(shift.kernel(), closed)
    u = rand(2, c, 9)
    state, ys = shift.init_state(2), []
    for t in range(9):
        y, state = shift.step(u[..., t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, -1), shift(u))
    shift(u).sum().backward()
    assert shift.B.grad is not None and shift.B.grad.abs().sum() > 0


def test_shift_B_is_trainable_by_default_and_can_be_fixed():
    trainable = dict(H3(8, d_state=4).named_parameters())
    assert "shift.B" in trainable
    fixed = H3(8, d_state=4, trainable_shift_B=False)
    assert "shift.B" not in dict(fixed.named_parameters())
    assert "shift.B" in dict(fixed.named_buffers())


def test_convolution_equals_recurrence_after_training_moved_B():
    torch.manual_seed(0)
    mixer = H3(8, d_state=6, head_dim=2).double()
    with torch.no_grad():
        mixer.shift.B.add_(0.3 * torch.randn_like(mixer.shift.B))
    x = rand(2, 10, 8)
    state, ys = mixer.init_state(2), []
    for t in range(10):
        y, state = mixer.step(x[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), mixer(x), rtol=1e-9, atol=1e-9)


# --- reliability: devices and dtypes ---------------------------------------------


def test_h3_matrix_stays_on_the_inputs_device():
    q, k = (torch.empty(1, 2, 6, device="meta") for _ in range(2))
    phi, psi, D = (torch.empty(*s, device="meta") for s in ((2, 3), (2, 6), (2,)))
    assert h3_matrix(q, k, phi, psi, D).device.type == "meta"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused_with_a_clear_error(dtype):
    mixer = H3(8, d_state=4)
    with pytest.raises(ValueError, match=r"x must be float32 or float64.*autocast"):
        mixer(torch.randn(1, 5, 8, dtype=dtype))
    with pytest.raises(ValueError, match="H3's parameters must be float32"):
        mixer.to(dtype)(torch.randn(1, 5, 8, dtype=dtype))


def test_integer_inputs_are_refused_by_name():
    mixer = H3(8, d_state=4)
    with pytest.raises(ValueError, match="x must be float32"):
        mixer(torch.ones(1, 5, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="x must be float32"):
        mixer.step(torch.ones(1, 8, dtype=torch.long), mixer.init_state(1))
    q, i = torch.randn(1, 4, 5), torch.ones(1, 4, 5, dtype=torch.long)
    phi, psi, D = torch.randn(4, 2), torch.randn(4, 5), torch.randn(4)
    with pytest.raises(ValueError, match="k must be float32"):
        h3_conv(q, i, q, phi, psi, D, 1)
    with pytest.raises(ValueError, match="q must be float32"):
        h3_matrix(i, q, phi, psi, D)


def test_autocast_runs_the_convolutions_in_float32():
    torch.manual_seed(0)
    mixer = H3(16, d_state=8, head_dim=4)
    x = torch.randn(2, 12, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mixer(x)
    reference = mixer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference, rtol=0.05, atol=0.05)


# --- the H3 hybrid language model grid (chapter 3) -----------------------------


def test_hybrid_places_attention_at_the_thirds_and_matches_parameters():
    from benchmarks import h3_hybrid
    from minimodels.attention import MultiHeadAttention
    from minimodels.lm import count_parameters

    kinds = {
        name: [type(b.mixer) for b in h3_hybrid.build(name, 0).blocks]
        for name in h3_hybrid.CONTENDERS
    }
    assert kinds["attention"] == [MultiHeadAttention] * 6
    assert kinds["h3"] == [H3] * 6
    assert [i for i, k in enumerate(kinds["hybrid"]) if k is MultiHeadAttention] == [
        2,
        4,
    ]
    counts = {n: count_parameters(h3_hybrid.build(n, 0)) for n in h3_hybrid.CONTENDERS}
    for name, count in counts.items():
        assert abs(count / counts["attention"] - 1) <= 0.02, (name, counts)
    assert h3_hybrid.width("h3") < h3_hybrid.width("attention")  # H3 costs more


def test_hybrid_grid_runs_at_toy_size(tmp_path):
    from benchmarks import h3_hybrid
    from minimodels import experiments

    out = tmp_path / "h3_hybrid.json"
    argv = ["--toy", "--contenders", "attention", "hybrid", "--out", str(out)]
    rows = h3_hybrid.main(argv)
    assert [r["contender"] for r in rows] == ["attention", "hybrid"]
    assert all(r["steps"] == 1 and r["test_bytes"] >= 1000 for r in rows)
    assert all(0 < r["val_bits"] < 9 and 0 < r["test_bits"] < 9 for r in rows)
    assert rows[1]["width"] == h3_hybrid.width("hybrid")
    made = experiments.load(out)["provenance"]
    assert made["command"].startswith("python -m benchmarks.h3_hybrid")
