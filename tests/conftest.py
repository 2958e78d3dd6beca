"""Test settings: Triton kernels run in the interpreter without a GPU, and tests
marked ``gpu`` are skipped there."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before Triton builds any kernel (at import of the kernel module).
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
