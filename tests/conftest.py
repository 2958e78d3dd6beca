"""Test settings: Triton kernels run in the interpreter without a GPU, tests
marked ``gpu`` are skipped there, and CPU tests run on one thread (their tensors
are tiny: a second thread mostly waits, and on a busy machine it spins)."""

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before Triton builds any kernel (at import of the kernel module).
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)


@pytest.fixture
def fresh_python() -> Callable[[str], str]:
    """Run a (dedented) Python program in a new interpreter, as a reader's
    ``python -c`` would; assert that it exits 0 and return what it printed."""

    def run(code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    return run


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
