"""Benchmarks: each module runs as ``python -m benchmarks.<name>``, prints a table of
ratios against a reference measured in the same run, and writes JSON (with the
device, versions and date) under ``figures/data/``. ``python -m benchmarks`` lists
them. Every benchmark also runs on CPU at a toy size, which the tests exercise."""
