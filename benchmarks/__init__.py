"""Benchmarks: each module runs as ``python -m benchmarks.<name>``, prints a table of
ratios against a reference measured in the same run, and writes JSON (with the
command, commit, device, versions and date) under ``figures/data/``.
``python -m benchmarks`` lists them.

Every benchmark is a ``minimodels.bench.Benchmark`` named ``BENCHMARK`` in its
module, with ``main(argv)`` calling ``BENCHMARK.main(argv)``. The harness gives
each the same options (``--device``, ``--threads``, default 1, ``--out``,
``--toy``, and ``--processes`` for a grid, ``--plot`` where it plots), names the
output after the device (``bench.device_tag``: ``NAME_cpu.json``,
``NAME_h100.json``, ``NAME_h200.json``), and stamps it with
``experiments.provenance``. A timing benchmark returns its results and the
harness saves them (``bench.save_json``); a grid of training runs passes
``bench.grid_options(args)`` to ``experiments.run_grid``, which writes its rows.
``--toy`` runs the benchmark's ``toy`` arguments (seconds, on the CPU), and
``tests/test_benchmarks.py`` runs every benchmark that way::

    def run(args):                        # -> JSON-able results
        ...
    BENCHMARK = bench.Benchmark(
        name="mine", doc=__doc__, run=run, out="mine_{tag}.json",
        add_arguments=add_arguments, toy=["--sizes", "16", "32"],
    )
    def main(argv=None):
        return BENCHMARK.main(argv)
"""
