import json

import pytest
import torch

from minimodels import bench


def test_time_fn_reports_median_and_min():
    result = bench.time_fn(lambda: torch.randn(10), repeats=3)
    assert set(result) == {"median_s", "min_s"}
    assert 0 < result["min_s"] <= result["median_s"]


def test_peak_memory_sees_a_large_tensor():
    small = bench.peak_memory(lambda: torch.ones(1000))
    big = bench.peak_memory(lambda: torch.ones(16_000_000))  # 64 MB
    assert big == 64_000_000
    assert small == 4000


def test_peak_tensor_bytes_counts_tensors_alive_at_once():
    def two_at_once():
        a = torch.ones(1000)
        b = torch.ones(1000)
        return a + b  # three 4000-byte tensors alive together

    def one_after_another():
        for _ in range(3):
            torch.ones(1000)

    assert bench.peak_tensor_bytes(two_at_once) == 12_000
    assert bench.peak_tensor_bytes(one_after_another) == 4000
    x = torch.ones(1000)
    assert bench.peak_tensor_bytes(lambda: x.view(10, 100).t()) == 0  # views


def test_fit_power_law_recovers_exponent():
    xs = [2**k for k in range(4, 10)]
    a, c = bench.fit_power_law(xs, [3 * x**2 for x in xs])
    assert a == pytest.approx(2.0)
    assert c == pytest.approx(3.0)


def test_sweep_and_save_json(tmp_path):
    rows = bench.sweep(
        lambda n: lambda: torch.ones(n), [10, 20], repeats=1, progress=False
    )
    assert [r["n"] for r in rows] == [10, 20] and "peak_bytes" in rows[0]
    path = bench.save_json(rows, tmp_path / "out" / "r.json")
    data = json.loads(path.read_text())
    assert data["results"] == rows
    assert {"device", "torch", "date"} <= set(data["environment"])
    assert bench.load_json(path) == data


def test_median_or_oom_times_or_reports_none():
    assert bench.median_or_oom(lambda: torch.ones(10), repeats=1) > 0

    def out_of_memory():
        raise torch.OutOfMemoryError("no room")

    assert bench.median_or_oom(out_of_memory, repeats=1) is None


def test_save_json_stamps_provenance(tmp_path):
    path = bench.save_json({"x": 1}, tmp_path / "r.json", command="python -m x --y")
    env = bench.load_json(path)["environment"]
    assert env["command"] == "python -m x --y"
    assert {"commit", "cpu", "threads", "device", "device_type"} <= set(env)


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    """One check for every results file: under torchrun, rank 0 writes."""
    from minimodels import experiments

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    bench.save_json([1], tmp_path / "a.json")
    experiments.run_grid(lambda c: {"m": 1}, [{"a": 1}], out=tmp_path / "b.json",
                         progress=False)  # fmt: skip
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    bench.save_json([1], tmp_path / "a.json")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize(
    "name, tag",
    [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
     ("NVIDIA A100-SXM4-40GB", "a100"), ("NVIDIA L40S", "l40s"),
     ("NVIDIA GeForce RTX 4090", "nvidia_geforce_rtx_4090")],
)  # fmt: skip
def test_device_tag_names_the_gpu(monkeypatch, name, tag):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert bench.device_tag("cuda") == tag
    assert bench.device_tag("cpu") == "cpu"


def test_time_interleaved_runs_every_function_once_per_round():
    calls = []
    fns = {name: lambda name=name: calls.append(name) for name in "abc"}
    seconds = bench.time_interleaved(fns, rounds=3, warmup=1)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] * 3
    assert set(seconds) == set("abc") and all(s > 0 for s in seconds.values())
    calls.clear()
    median = bench.time_interleaved(fns, rounds=2, warmup=0, best=False)
    assert calls == ["a", "b", "c"] * 2 and set(median) == set("abc")
    with pytest.raises(ValueError, match="rounds"):
        bench.time_interleaved(fns, rounds=0)


def test_fwd_bwd_backpropagates_a_fixed_random_gradient():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 5, 4)
    step = bench.fwd_bwd(layer, x)
    step()
    first = layer.weight.grad.clone()
    step()  # cleared, not accumulated: the same gradient again
    torch.testing.assert_close(layer.weight.grad, first)
    g = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    layer.zero_grad()
    (layer(x) * g).sum().backward()
    torch.testing.assert_close(layer.weight.grad, first)
    ids = torch.randint(0, 7, (2, 5))  # integer inputs (token ids) take no grad
    bench.fwd_bwd(torch.nn.Embedding(7, 3), ids)()
    bench.fwd_bwd(layer, x, autocast=torch.bfloat16)()
    assert layer.weight.grad.dtype == torch.float32


def _toy_run(args):
    return {"size": args.size, "threads": torch.get_num_threads()}


TOY = bench.Benchmark(
    name="toy", doc="A toy benchmark.", run=_toy_run, out="toy_{tag}.json",
    add_arguments=lambda p: p.add_argument("--size", type=int, default=100),
    toy=["--size", "3"],
)  # fmt: skip


def test_benchmark_harness_parses_runs_and_saves(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    out = tmp_path / "r.json"
    result = TOY.main(["--toy", "--out", str(out), "--threads", "2"])
    assert result == {"size": 3, "threads": 2}  # toy size, two threads
    assert torch.get_num_threads() == threads  # the caller's count is back
    data = bench.load_json(out)
    assert data["results"] == result and data["environment"]["threads"] == 2
    assert data["environment"]["command"] == (
        f"python -m benchmarks.toy --toy --out {out} --threads 2"
    )
    assert TOY.main(["--toy", "--size", "5", "--out", str(out)])["size"] == 5
    monkeypatch.chdir(tmp_path)  # outside a checkout: ./figures/data/
    assert TOY.parse([]).out == tmp_path / "figures" / "data" / "toy_cpu.json"
    assert TOY.parse(["--toy"]).out == tmp_path / "_build" / "toy" / "toy_cpu.json"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "H200")
    assert TOY.parse(["--device", "cuda"]).out.name == "toy_h200.json"
    with pytest.raises(ValueError, match="threads"):
        TOY.parse(["--threads", "0"])


def test_grid_benchmark_leaves_the_file_to_run_grid(tmp_path):
    from minimodels import experiments

    def run(args):
        cells = [{"seed": s} for s in range(args.seeds)]
        return experiments.run_grid(
            lambda c: {"m": c["seed"]},
            cells,
            progress=False,
            **bench.grid_options(args),
        )

    grid = bench.Benchmark(
        name="grid", doc=None, run=run, out="grid.json", grid=True, device=None,
        add_arguments=lambda p: p.add_argument("--seeds", type=int, default=2),
    )  # fmt: skip
    out = tmp_path / "g.json"
    rows = grid.main(["--out", str(out)])
    stored = experiments.load(out)
    assert stored["rows"] == rows and len(rows) == 2
    assert stored["provenance"]["command"].startswith("python -m benchmarks.grid")
    with pytest.raises(SystemExit):
        grid.parse(["--device", "cuda"])  # a CPU grid has no --device


def test_plot_loglog_writes_a_figure(tmp_path):
    series = {"a": [(1, 1.0), (2, 4.0)], "b": [(1, 2.0), (2, None)]}
    path = bench.plot_loglog(series, tmp_path / "f.png", xlabel="n", ylabel="s")
    assert path.stat().st_size > 1000


def _square(cell):
    return {"m": cell["seed"] ** 2}


def test_grid_benchmark_of_cells_trains_reports_and_keeps_rows(tmp_path, capsys):
    from minimodels import experiments

    grid = bench.Benchmark(
        "cells", None, lambda args: [{"seed": s} for s in args.seeds], "cells.json",
        lambda p: p.add_argument("--seeds", type=int, nargs="+", default=[1, 2]),
        toy=["--seeds", "3"], cell=_square, device=None,
        report=lambda rows: f"{len(rows)} rows",
    )  # fmt: skip
    out = tmp_path / "c.json"
    assert grid.main(["--toy", "--out", str(out)]) == [{"seed": 3, "m": 9}]
    assert "1 rows" in capsys.readouterr().out
    rows = grid.main(["--out", str(out), "--threads", "1"])
    assert rows == [{"seed": 1, "m": 1}, {"seed": 2, "m": 4}]
    stored = experiments.load(out)
    assert stored["rows"] == [*rows, {"seed": 3, "m": 9}]  # the toy row is kept
    assert stored["provenance"]["command"].endswith("--threads 1")


def _result(folder, stem, device, date, device_type="cuda", key="environment"):
    env = {"device": device, "device_type": device_type, "date": date}
    (folder / f"{stem}.json").write_text(json.dumps({key: env, "results": stem}))


def test_gpu_result_takes_any_gpu_tag_and_the_newest(tmp_path):
    assert bench.gpu_result("flash", folder=tmp_path) is None
    _result(tmp_path, "flash_cpu", "x86_64", "2026-12-03", device_type="cpu")
    assert bench.gpu_result("flash", folder=tmp_path) is None  # a CPU run is not one
    _result(tmp_path, "flash_h100", "NVIDIA H100 80GB HBM3", "2026-11-01")
    path, data = bench.gpu_result("flash", folder=tmp_path)
    assert path.name == "flash_h100.json" and data["results"] == "flash_h100"
    _result(tmp_path, "flash_h200", "NVIDIA H200", "2026-12-01")
    path, data = bench.gpu_result("flash", folder=tmp_path)
    assert path.name == "flash_h200.json"
    assert data["environment"]["device"] == "NVIDIA H200"
    # an unknown GPU's tag is its whole name; a grid records "provenance"
    _result(tmp_path, "flash_nvidia_geforce_rtx_4090", "NVIDIA GeForce RTX 4090",
            "2026-12-02", key="provenance")  # fmt: skip
    path, _ = bench.gpu_result("flash", folder=tmp_path)
    assert path.name == "flash_nvidia_geforce_rtx_4090.json"


def test_gpu_result_ignores_another_benchmark_sharing_the_prefix(tmp_path):
    _result(tmp_path, "hyena_vs_attention_h100", "NVIDIA H100", "2026-12-01")
    assert bench.gpu_result("hyena", folder=tmp_path) is None
    path, _ = bench.gpu_result("hyena_vs_attention", folder=tmp_path)
    assert path.name == "hyena_vs_attention_h100.json"
    # a file whose name says h100 but whose device is not an H100 is not taken
    _result(tmp_path, "dilated_h100", "NVIDIA A100-SXM4-80GB", "2026-12-01")
    assert bench.gpu_result("dilated", folder=tmp_path) is None
