from functools import partial

import pytest
import torch

from minimodels.attention import MultiHeadAttention
from minimodels.data import associative_recall
from minimodels.lm import LM, count_parameters, mixer_factory, sample_logits
from minimodels.testing import assert_causal
from minimodels.train import TrainConfig, evaluate, train


def test_logits_shape_and_head_untied_by_default():
    model = LM(vocab_size=20, dim=32, depth=2)
    logits = model(torch.randint(0, 20, (3, 7)))
    assert logits.shape == (3, 7, 20)
    assert model.head.weight is not model.embed.weight
    tied = LM(vocab_size=20, dim=32, depth=2, tie_weights=True)
    assert tied.head.weight is tied.embed.weight


@pytest.mark.parametrize("dim", [16, 64, 256])
def test_embedding_init_scales_with_the_width(dim):
    torch.manual_seed(0)
    std = LM(vocab_size=512, dim=dim, depth=1).embed.weight.std().item()
    assert abs(std - (2 / dim) ** 0.5) < 0.1 * (2 / dim) ** 0.5


def test_lm_is_causal():
    torch.manual_seed(0)
    model = LM(vocab_size=20, dim=32, depth=2)
    assert_causal(model, torch.randint(0, 20, (2, 12)), positions=[1, 6, 11])


def test_mixer_by_name_and_by_factory_build_the_same_model():
    torch.manual_seed(0)
    a = LM(16, 32, 2, mixer_factory("attention", heads=2))
    torch.manual_seed(0)
    b = LM(16, 32, 2, partial(MultiHeadAttention, heads=2))
    assert count_parameters(a) == count_parameters(b)
    ids = torch.randint(0, 16, (2, 5))
    torch.testing.assert_close(a(ids), b(ids))


def test_misspelt_mixer_option_is_an_error():
    with pytest.raises(TypeError, match="haeds"):
        LM(16, 32, 1, mixer_factory("attention", haeds=2))
    with pytest.raises(ValueError, match="unknown mixer"):
        mixer_factory("transformer")


def test_recurrent_generation_equals_recompute():
    torch.manual_seed(0)
    model = LM(16, 32, 2).double().eval()
    prompt = torch.randint(0, 16, (2, 4))
    assert model.recurrent
    fast = model.generate(prompt, 6, temperature=0, recurrent=True)
    slow = model.generate(prompt, 6, temperature=0, recurrent=False)
    assert fast.shape == (2, 10)
    assert torch.equal(fast, slow)
    assert torch.equal(fast[:, :4], prompt)


def test_sampling_is_seeded_and_respects_top_k():
    torch.manual_seed(0)
    model = LM(16, 32, 1).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    runs = [
        model.generate(prompt, 8, top_k=1, generator=torch.Generator().manual_seed(s))
        for s in (0, 1)
    ]
    greedy = model.generate(prompt, 8, temperature=0)
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], greedy)
    a = model.generate(prompt, 8, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dim"):
        LM(16, 0, 1)
    with pytest.raises(ValueError, match="ids must have shape"):
        LM(16, 32, 1)(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="top_k"):
        LM(16, 32, 1).generate(torch.zeros(1, 2, dtype=torch.long), 2, top_k=0)


@pytest.mark.parametrize(
    "temperature, top_k, match",
    [(-1.0, None, "temperature"), (float("nan"), None, "temperature"),
     (1.0, 0, "top_k"), (1.0, 2.5, "top_k")],
)  # fmt: skip
def test_sampling_options_are_checked(temperature, top_k, match):
    model = LM(vocab_size=8, dim=16, depth=1)
    with pytest.raises(ValueError, match=match):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 3,
                       temperature=temperature, top_k=top_k)  # fmt: skip
    with pytest.raises(ValueError, match=match):
        sample_logits(torch.zeros(1, 8), temperature, top_k, None)


def _recall_examples(batch_size, generator):
    seed = int(torch.randint(1 << 30, (1,), generator=generator))
    return associative_recall(batch_size, 17, 16, multi_query=True, seed=seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attention_lm_learns_associative_recall(seed):
    """The shell's proof: a 2-layer attention-only LM at width 64 solves recall
    (8 key-value pairs over 8 keys, then the query) in 300 steps on every seed.
    Measured (seeds 0-5): 1.00 on the 1,000 test questions at step 300, >= 0.97
    by step 150 on all six; with GPT-2's 0.02 init the chapter-0 model stays at
    the counting baseline (chapter 0 and benchmarks/ch00_recall.py)."""
    torch.manual_seed(seed)
    model = LM(16, dim=64, depth=2, mixer=mixer_factory("attention", heads=4),
               mlp_mult=0)  # fmt: skip
    test = associative_recall(1000, 17, 16, seed=2**31 + 1)
    config = TrainConfig(steps=300, batch_size=64, lr=2e-3, warmup=30,
                         eval_every=300, seed=seed, progress=False)  # fmt: skip
    history = train(model, _recall_examples, test, config)
    _, acc = evaluate(model, test, batches=None)
    assert acc == history.final_acc  # the trainer scored all 1,000 questions
    assert acc >= 0.95, acc


def test_lm_takes_one_mixer_per_layer():
    model = LM(16, dim=16, depth=3, mixer=["s4d", "attention", "s4d"])
    kinds = [type(b.mixer).__name__ for b in model.blocks]
    assert kinds == ["S4DMixer", "MultiHeadAttention", "S4DMixer"]
    assert model(torch.randint(0, 16, (2, 8))).shape == (2, 8, 16)
    with pytest.raises(ValueError, match="depth \\(3\\)"):
        LM(16, dim=16, depth=3, mixer=["s4d", "attention"])
