"""Counting what Triton kernels move, in the interpreter (``TRITON_INTERPRET=1``).

``interpreter_io(fn)`` patches the interpreter's masked load, masked store and dot
while ``fn()`` runs, so a kernel's memory traffic and matrix products are counted
exactly, element by element, the same on any machine: the byte counts chapter 1
compares with FlashConv's closed forms (``benchmarks.fftconv.fused_bytes``).
"""

from __future__ import annotations

from collections.abc import Callable

from minimodels._util import check
from minimodels.kernels.tiles import interpreted

__all__ = ["interpreter_io"]


def interpreter_io(fn: Callable[[], object]) -> dict[str, int]:
    """What the Triton kernels launched by ``fn()`` do, counted in the interpreter's
    own operations: bytes loaded ("read") and stored ("written"), element by
    element with masked-off lanes excluded, and the matrix products ("dots", with
    their multiply-adds in "macs"). Exact, the same on any machine; needs
    TRITON_INTERPRET=1."""
    check(interpreted(), "interpreter_io needs TRITON_INTERPRET=1")
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    load, store = builder.create_masked_load, builder.create_masked_store
    dot_ = builder.create_dot
    counts = {"read": 0, "written": 0, "dots": 0, "macs": 0}

    def nbytes(ptrs, mask) -> int:  # noqa: ANN001
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        # the mask broadcasts to the pointers' shape: each of its entries repeats
        # ptrs.size / mask.size times
        repeats = ptrs.data.size // mask.data.size
        return int(mask.data.sum()) * repeats * size

    def counted_load(self, ptrs, mask, other, *args):  # noqa: ANN001, ANN002, ANN202
        counts["read"] += nbytes(ptrs, mask)
        return load(self, ptrs, mask, other, *args)

    def counted_store(self, ptrs, value, mask, *args):  # noqa: ANN001, ANN002, ANN202
        counts["written"] += nbytes(ptrs, mask)
        return store(self, ptrs, value, mask, *args)

    def counted_dot(self, a, b, *args):  # noqa: ANN001, ANN002, ANN202
        (rows, inner), cols = a.data.shape, b.data.shape[1]
        counts["dots"] += 1
        counts["macs"] += rows * inner * cols
        return dot_(self, a, b, *args)

    patched = {
        "create_masked_load": counted_load,
        "create_masked_store": counted_store,
        "create_dot": counted_dot,
    }
    original = {name: getattr(builder, name) for name in patched}
    try:
        for name, method in patched.items():
            setattr(builder, name, method)
        fn()
    finally:
        for name, method in original.items():
            setattr(builder, name, method)
    return counts
