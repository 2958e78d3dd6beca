"""minimodels: long-context sequence models, small enough to read.

The library behind the minimodels textbook. Each module is one idea of the book:

- ``minimodels.attention``: softmax attention, the reference mixer;
- ``minimodels.lm``: a language model that takes any sequence mixer;
- ``minimodels.data``: synthetic tasks and offline text corpora;
- ``minimodels.train``: a small deterministic trainer;
- ``minimodels.bench``: timing and memory helpers.

Importing the package loads no data, prints nothing and sets no seed.
"""

from minimodels import attention, bench, data, lm, train
from minimodels.attention import MultiHeadAttention, attention_naive, attention_sdpa
from minimodels.lm import LM, mixer_factory
from minimodels.train import TrainConfig

__version__ = "0.1.0"

__all__ = [
    "attention",
    "bench",
    "data",
    "lm",
    "train",
    "LM",
    "MultiHeadAttention",
    "TrainConfig",
    "attention_naive",
    "attention_sdpa",
    "mixer_factory",
    "__version__",
]
