"""Every benchmark runs, at a toy size, on the CPU, into a temporary file.

Every benchmark is a ``minimodels.bench.Benchmark`` and runs with ``--toy`` (its
own seconds-long arguments). The file it writes must carry provenance (the
command that made it) and rows.
"""

import importlib
import json

import pytest

from benchmarks.__main__ import main, names
from minimodels import bench


def test_listing_names_every_benchmark(capsys):
    main([])
    out = capsys.readouterr().out
    assert set(names()) >= {"bakeoff", "conv", "flash", "hyena"}
    for name in names():
        assert f"  {name} " in out


def _rows(data: dict) -> list:
    if "provenance" in data:  # a grid: experiments.run_grid's file
        assert data["provenance"]["command"]
        return data["rows"]
    assert data["environment"]["command"]
    results = data["results"]
    if isinstance(results, dict):
        return results.get("rows", [v for v in results.values() if v])
    return results


@pytest.mark.parametrize("name", names())
def test_benchmark_runs_at_toy_size(name, tmp_path, monkeypatch):
    module = importlib.import_module(f"benchmarks.{name}")
    harness = getattr(module, "BENCHMARK", None)
    assert isinstance(harness, bench.Benchmark), f"{name}: not on the harness"
    assert harness.name == name
    out = tmp_path / f"{name}.json"
    monkeypatch.chdir(tmp_path)  # nothing may be written into the checkout
    module.main(["--toy", "--out", str(out)])
    assert _rows(json.loads(out.read_text()))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.json"]


def test_running_chosen_benchmarks_at_toy_size(tmp_path, capsys):
    bare = [n for n in names() if n not in _on_harness()][:1]  # no toy size
    main(["--only", "h3", *bare, "--toy", "--out-dir", str(tmp_path)])
    assert [p.name for p in tmp_path.iterdir()] == ["h3.json"]
    assert ("skipped" in capsys.readouterr().out) == bool(bare)


def _on_harness() -> set[str]:
    modules = {n: importlib.import_module(f"benchmarks.{n}") for n in names()}
    return {n for n, m in modules.items() if hasattr(m, "BENCHMARK")}
