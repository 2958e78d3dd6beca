"""Triton kernels, installed as ``minimodels.kernels``.

Importing this package does not import Triton; each kernel module does, so that
``import minimodels`` works where Triton is not installed.
"""
