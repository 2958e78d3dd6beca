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
