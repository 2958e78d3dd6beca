"""Triton kernels: ``minimodels.kernels`` (the folder ``kernels/`` at the top of
the repository is a link to this one).

``flash`` (FlashAttention, chapter 5), ``fftconv`` (FlashConv, chapters 1 and 3;
its DFT steps in ``dft``), ``io`` (counting what kernels load and store, in the
interpreter) and ``tiles``, what they share (masked tile loads and stores, head
offsets, the causal tile schedule, where and in which dtype a kernel runs).

They need Triton, which ships Linux wheels only: ``pip install
"minimodels[triton]"`` on Linux. Without it this package says so when imported,
and everything else in ``minimodels`` works as usual (``import minimodels``
never imports this package; chapter 5 shows the kernels' code instead).
"""

import importlib.util

if importlib.util.find_spec("triton") is None:
    raise ImportError(
        "minimodels.kernels needs Triton, which is not installed: "
        'pip install "minimodels[triton]" (Triton ships Linux wheels only; on '
        "macOS and Windows the PyTorch versions in minimodels.flash run instead)"
    )
