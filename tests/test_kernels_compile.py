"""The FlashAttention kernels compile for a GPU (an H100, sm_90) on a machine
without one. The interpreter runs the kernels' Python; only the compiler sees
what a GPU would (types of tuple arguments, constexpr branches, layouts), so
this catches what the CPU tests cannot. Triton's wheel ships the CUDA backend
and ptxas; the compile runs in a subprocess without TRITON_INTERPRET, which makes
``triton.jit`` return interpreted functions. About 15 CPU-seconds."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

COMPILE = """
import warnings
warnings.filterwarnings("ignore")
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from minimodels.kernels import flash

STRIDES = ("i32", "i32", "i32")  # a (b, h, n) stride tuple
FLOATS = {"scale": "fp32", "scale_log2": "fp32"}


def signature(kernel, dtype, constexprs):
    types = {}
    for name in kernel.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name in ("LSE", "DELTA"):
            types[name] = "*fp32"
        elif name in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV"):
            types[name] = "*" + dtype
        elif name.startswith("s") and name not in FLOATS:
            types[name] = STRIDES
        else:
            types[name] = FLOATS.get(name, "i32")
    return types


for dtype, causal in (("fp16", True), ("bf16", False)):
    for kernel in (flash._fwd_kernel, flash._bwd_dkdv_kernel, flash._bwd_dq_kernel):
        constexprs = {"HEAD_DIM": 64, "BLOCK_D": 64, "CAUSAL": causal, "IEEE": False,
                      "BLOCK_M": 64, "BLOCK_N": 64}
        source = ASTSource(
            fn=kernel, signature=signature(kernel, dtype, constexprs),
            constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()},
        )
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        print(kernel.fn.__name__, dtype, causal, len(compiled.asm["cubin"]))
"""


def test_the_kernels_compile_for_an_h100(tmp_path):
    try:
        from triton.backends import backends
    except ImportError:
        pytest.skip("this Triton has no backend registry")
    if "nvidia" not in backends:
        pytest.skip("this Triton wheel has no CUDA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile now, not from a cache
    done = subprocess.run(
        [sys.executable, "-c", COMPILE], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.split("\n")[:-1]
    assert len(lines) == 6, done.stdout
    for line in lines:
        name, dtype, causal, cubin = line.split()
        assert int(cubin) > 10_000, line  # a real binary, not an empty module
