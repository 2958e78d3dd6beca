"""Triton kernels: ``minimodels.kernels`` (the folder ``kernels/`` at the top of
the repository is a link to this one).

Importing this package does not import Triton; each kernel module does, so that
``import minimodels`` works where Triton is not installed.
"""
