"""Draw figures/landing-costs.png, the landing page's figure: how the work of one
mixing layer grows with the sequence length N for the book's families of models.

The curves are operation counts from the chapters' formulas (multiply-adds per
layer at width c = 1024, window w = 2048, pooling k = 4), not measurements:

    attention        N^2 c                    (chapters 0, 5)
    FFT convolution  c N log2 N               (chapters 1-4: S4D, H3, Hyena)
    dilated / block  N min(N, w) c            (chapters 6, 7)
    hierarchical     (N/k)^2 c + N min(N, w) c  (chapter 8)

    python scripts/landing_figure.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

C, W, K = 1024, 2048, 4


def main() -> Path:
    n = np.logspace(10, 20, 50, base=2)
    local = np.minimum(n, W) * C  # a window never holds more than the sequence
    curves = {
        "attention: $N^2 c$ (ch. 0, 5)": n**2 * C,
        "hierarchical: $(N/k)^2 c + N w c$ (ch. 8)": (n / K) ** 2 * C + n * local,
        "dilated, block recurrence: $N w c$ (ch. 6, 7)": n * local,
        "FFT convolution: $c N \\log N$ (ch. 1-4)": C * n * np.log2(n),
    }
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, ops in curves.items():
        ax.loglog(n, ops, lw=2, label=label)
    ax.set(xlabel="sequence length $N$", ylabel="multiply-adds per layer",
           title="How the cost of mixing a sequence grows (c = 1024)")  # fmt: skip
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(__file__).resolve().parent.parent / "figures" / "landing-costs.png"
    fig.savefig(out, dpi=120)
    return out


if __name__ == "__main__":
    print(main())
