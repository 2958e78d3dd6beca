"""Checks that the tests and the chapters share: causality and fast == reference.

``assert_causal`` perturbs the input at position t and asserts that no output
before t moves. ``assert_same`` runs a fast path and its plain reference on the
same inputs and compares outputs and gradients with respect to every input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["assert_causal", "assert_same"]


def assert_causal(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    positions: Sequence[int] | None = None,
    *,
    dim: int = 1,
    atol: float = 1e-6,
) -> None:
    """Assert that ``fn(x)`` at positions < t does not depend on ``x`` at t.

    ``x`` is float (perturbed by noise) or integer token ids (perturbed by
    changing the token). Outputs must share the sequence axis ``dim`` with x.
    """
    n = x.shape[dim]
    positions = list(positions) if positions is not None else sorted({n // 2, n - 1})
    with torch.no_grad():
        base = fn(x)
        for t in positions:
            y = x.clone()
            sl = y.select(dim, t)
            if y.is_floating_point() or y.is_complex():
                sl.add_(torch.randn_like(sl))
            else:
                sl.copy_((sl + 1) % max(int(x.max()) + 1, 2))
            out = fn(y)
            before = base.narrow(dim, 0, t)
            after = out.narrow(dim, 0, t)
            err = (before - after).abs().max().item() if t > 0 else 0.0
            assert err <= atol, f"output before position {t} changed by {err:.3g}"
            if t < n:
                moved = (base.narrow(dim, t, n - t) - out.narrow(dim, t, n - t)).abs()
                assert moved.max() > 0, f"perturbing position {t} changed nothing"


def assert_same(
    fast: Callable[..., Tensor],
    reference: Callable[..., Tensor],
    inputs: Sequence[Tensor],
    *,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    grads: bool = True,
    seed: int = 0,
) -> None:
    """Assert ``fast(*inputs) == reference(*inputs)``, and so are the gradients of a
    random projection of the output with respect to every floating input."""
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    others = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out_fast, out_ref = fast(*leaves), reference(*others)
    torch.testing.assert_close(out_fast, out_ref, rtol=rtol, atol=atol)
    if not grads:
        return
    g = torch.Generator(device="cpu").manual_seed(seed)
    probe = torch.randn(out_ref.shape, generator=g, dtype=out_ref.dtype).to(out_ref)
    (out_fast * probe).sum().backward()
    (out_ref * probe).sum().backward()
    for i, (a, b) in enumerate(zip(leaves, others)):
        if a.grad is None and b.grad is None:
            continue
        assert a.grad is not None and b.grad is not None, f"input {i}: missing grad"
        torch.testing.assert_close(
            a.grad, b.grad, rtol=rtol, atol=atol, msg=_prefixed(f"grad {i}")
        )


def _prefixed(prefix: str) -> Callable[[str], str]:
    """A message for ``assert_close`` that says which input failed."""
    return lambda message: f"{prefix}: {message}"
