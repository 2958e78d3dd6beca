"""A language model that takes any sequence mixer.

The layout is the pre-norm residual stack of GPT-2 ("Language Models are
Unsupervised Multitask Learners", Radford et al., 2019) with the attention replaced
by a pluggable *mixer*:

    x_0 = Embed(ids)
    x_{l+1} = x_l' + MLP(Norm(x_l')),  x_l' = x_l + Mixer(Norm(x_l))
    logits = Head(Norm(x_L))

A mixer is any ``nn.Module`` mapping (b n c) -> (b n c). It is given to ``LM`` as a
factory ``dim -> module`` (e.g. ``functools.partial(MultiHeadAttention, heads=4)``)
or by name (``"attention"``, ``"s4d"``, ``"h3"``, ``"hyena"``, ``"dilated"``: the
mixers of ``minimodels.registry``) with its options. A mixer that also has
``init_state(batch)`` and ``step(x_t, state) -> (y_t, state)`` lets ``generate``
decode in recurrent mode: constant work per token.

Shapes: b batch, n sequence, c model dim, v vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimodels._util import check, check_ndim, check_positive

__all__ = [
    "LM",
    "Shell",
    "Block",
    "MLP",
    "mixer_factory",
    "count_parameters",
    "init_embedding",
    "sample_logits",
    "check_sampling",
]

MixerFactory = Callable[[int], nn.Module]


class RecurrentMixer(Protocol):
    """A mixer that can also decode one token at a time."""

    def init_state(self, batch: int) -> Any: ...

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]: ...


def mixer_factory(name: str, **options: Any) -> MixerFactory:
    """The mixer ``name`` of ``minimodels.registry`` as a factory ``dim -> module``;
    ``options`` go to its constructor, which rejects any it does not know (no
    silent swallowing of a misspelt option).

    The registry sits on the floor above this module (it names the chapter
    modules, which all import ``lm``), so it is imported here, at call time: an
    import at the top of ``lm`` would be a cycle.
    """
    from minimodels import registry

    return registry.mixer_factory(name, **options)


def init_embedding(embed: nn.Embedding) -> None:
    """He (Kaiming) normal init, std sqrt(2 / dim), as x-transformers does.

    GPT-2's 0.02 was chosen for width 768. At the book's widths (28-64) it puts
    the token's identity about 10x below what the first block adds to the
    residual stream, and attention then never learns associative recall
    (chapter 0 shows the experiment); sqrt(2 / dim) keeps the embedding at the
    scale of the blocks' outputs at any width.
    """
    nn.init.normal_(embed.weight, std=math.sqrt(2 / embed.embedding_dim))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class MLP(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, mult * dim), nn.GELU(), nn.Linear(mult * dim, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-norm residual block: mixer, then MLP."""

    def __init__(self, dim: int, mixer: nn.Module, mlp_mult: int = 4) -> None:
        super().__init__()
        self.norm1, self.mixer = nn.LayerNorm(dim), mixer
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_mult) if mlp_mult > 0 else None

    def _mlp(self, x: Tensor) -> Tensor:
        return x if self.mlp is None else x + self.mlp(self.norm2(x))

    def forward(self, x: Tensor) -> Tensor:
        return self._mlp(x + self.mixer(self.norm1(x)))

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        y, state = cast(RecurrentMixer, self.mixer).step(self.norm1(x), state)
        return self._mlp(x + y), state


class Shell(nn.Module):
    """What every whole model of the book shares around its blocks.

    Token embedding (``init_embedding``) -> the subclass's blocks -> norm -> head,
    and one loss protocol: ``model(ids) -> logits (b n v)`` and
    ``model.loss(ids, targets)``, the cross-entropy over positions whose target
    is not ``ignore_index``. ``out_dim`` is the width the head reads when it
    differs from the embedding's (a hierarchical model predicting from a
    compressed level). The head is untied from the embedding by default (as in
    x-transformers): tied, the embedding has to serve both as the residual
    stream's input, where it must be large, and as the output classifier, where
    large rows make large initial logits; ``tie_weights=True`` ties them as GPT-2
    does (only when ``out_dim == dim``).
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        *,
        out_dim: int | None = None,
        tie_weights: bool = False,
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        self._rng_at_init = torch.random.get_rng_state()  # for draw_in_order
        check_positive(vocab_size=vocab_size, dim=dim)
        out_dim = dim if out_dim is None else out_dim
        check_positive(out_dim=out_dim)
        check(
            not tie_weights or out_dim == dim,
            f"tie_weights needs out_dim == dim, got {out_dim} and {dim}",
        )
        self.vocab_size, self.ignore_index = vocab_size, ignore_index
        self.embed = nn.Embedding(vocab_size, dim)
        self.norm = nn.LayerNorm(out_dim)
        self.head = nn.Linear(out_dim, vocab_size, bias=False)
        init_embedding(self.embed)
        if tie_weights:
            self.head.weight = self.embed.weight

    def draw_in_order(self, build: Callable[[], None]) -> None:
        """Build the blocks (``build``) with the parameters drawn in the order the
        book's whole models drew them before they shared ``Shell`` (embedding,
        blocks, head, then ``init_embedding``), so that a seed gives the weights
        their committed grids were trained with. ``__init__`` has drawn the
        embedding and head first: rewind the generator to where it stood then,
        and draw again."""
        torch.random.set_rng_state(self._rng_at_init)
        self.embed.reset_parameters()
        build()
        self.head.reset_parameters()
        init_embedding(self.embed)

    def logits(self, x: Tensor) -> Tensor:
        """The last hidden states (b n c) -> logits (b n v)."""
        return self.head(self.norm(x))

    def loss(self, ids: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy of ``self(ids)`` against ``targets`` (b n), skipping
        positions whose target is ``ignore_index``."""
        check(
            targets.shape == ids.shape,
            f"targets must have the shape of ids {tuple(ids.shape)}, "
            f"got {tuple(targets.shape)}",
        )
        logits = self(ids)
        return F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=self.ignore_index
        )


class LM(Shell):
    """Token embedding -> ``depth`` blocks of (mixer, MLP) -> norm -> head.

    ``mixer`` is one factory (or name) for every layer, or a sequence of
    ``depth`` of them, one per layer: ``["h3", "attention", "h3", "h3"]`` is a
    hybrid like the H3 paper's language model.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        depth: int,
        mixer: MixerFactory | str | Sequence[MixerFactory | str] = "attention",
        *,
        mlp_mult: int = 4,
        tie_weights: bool = False,
    ) -> None:
        check_positive(vocab_size=vocab_size, dim=dim, depth=depth)
        check(mlp_mult >= 0, f"mlp_mult must be >= 0, got {mlp_mult}")
        super().__init__(vocab_size, dim, tie_weights=tie_weights)
        per_layer = (
            [mixer] * depth
            if isinstance(mixer, str) or callable(mixer)
            else list(mixer)
        )
        check(
            len(per_layer) == depth,
            f"mixer must be one factory or a sequence of depth ({depth}) of them, "
            f"got {len(per_layer)}",
        )
        makes = [mixer_factory(m) if isinstance(m, str) else m for m in per_layer]
        self.blocks = nn.ModuleList(Block(dim, make(dim), mlp_mult) for make in makes)

    def forward(self, ids: Tensor) -> Tensor:  # ids: (b n) -> logits (b n v)
        check_ndim("ids", ids, 2, "b n")
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.logits(x)

    @property
    def recurrent(self) -> bool:
        """True when every mixer can decode one token at a time."""
        return all(hasattr(b.mixer, "step") for b in self.blocks)

    def step(self, token: Tensor, states: list[Any]) -> tuple[Tensor, list[Any]]:
        """One token (b,) -> logits (b v), advancing every mixer's state."""
        x = self.embed(token)
        new_states = []
        for block, state in zip(self.blocks, states):
            x, state = cast(Block, block).step(x, state)
            new_states.append(state)
        return self.logits(x), new_states

    def init_states(self, batch: int) -> list[Any]:
        return [cast(RecurrentMixer, b.mixer).init_state(batch) for b in self.blocks]

    @torch.no_grad()
    def generate(
        self,
        prompt: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        recurrent: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample ``max_new_tokens`` after ``prompt`` (b n); returns (b n+new).

        ``recurrent=True`` feeds one token at a time through the mixers' ``step``
        (constant work per token); ``False`` recomputes the whole prefix each time.
        The default is recurrent whenever every mixer supports it.
        """
        check_ndim("prompt", prompt, 2, "b n")
        check(prompt.shape[1] > 0, "prompt must hold at least one token")
        check_sampling(temperature, top_k)
        recurrent = self.recurrent if recurrent is None else recurrent
        check(not recurrent or self.recurrent, "a mixer here has no step()")
        sample = partial(
            sample_logits, temperature=temperature, top_k=top_k, generator=generator
        )
        ids = prompt
        if recurrent:
            states = self.init_states(prompt.shape[0])
            for t in range(prompt.shape[1]):
                logits, states = self.step(prompt[:, t], states)
            for _ in range(max_new_tokens):
                ids = torch.cat((ids, sample(logits)[:, None]), dim=1)
                logits, states = self.step(ids[:, -1], states)
            return ids
        for _ in range(max_new_tokens):
            ids = torch.cat((ids, sample(self(ids)[:, -1])[:, None]), dim=1)
        return ids


def check_sampling(temperature: float, top_k: int | None) -> None:
    """The sampling options every ``generate`` accepts, checked by name."""
    check(
        isinstance(temperature, (int, float)) and math.isfinite(temperature),
        f"temperature must be a finite number, got {temperature!r}",
    )
    check(temperature >= 0, f"temperature must be >= 0, got {temperature}")
    check(
        top_k is None or (isinstance(top_k, int) and top_k > 0),
        f"top_k must be a positive integer or None, got {top_k!r}",
    )


def sample_logits(
    logits: Tensor,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
) -> Tensor:
    """One token per row of logits (b v): greedy at temperature 0, else sampled
    from the softmax at ``temperature`` over the ``top_k`` largest logits."""
    check_sampling(temperature, top_k)
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
