"""The experiment harness: resumable, parallel, provenance, honest selection."""

import json
import random

import pytest

from minimodels import experiments


def square(cell: dict) -> dict:
    """A stand-in for a training run: deterministic in its cell."""
    score = 1.0 - (cell["lr"] - 0.01) ** 2 * 1e3 + 0.01 * cell["seed"]
    return {"val": score, "test": score - 0.001}


CELLS = [
    {"contender": c, "seed": s, "lr": lr}
    for c in ("a", "b")
    for s in (0, 1, 2)
    for lr in (0.003, 0.01, 0.03)
]


def test_rows_follow_cells_and_carry_provenance(tmp_path):
    out = tmp_path / "grid.json"
    rows = experiments.run_grid(square, CELLS, out=out, progress=False)
    assert [{k: r[k] for k in CELLS[0]} for r in rows] == CELLS
    stored = experiments.load(out)
    assert stored["rows"] == rows
    for field in ("command", "commit", "torch", "python", "cpu", "threads", "date"):
        assert field in stored["provenance"]


def test_resumes_without_rerunning(tmp_path):
    out = tmp_path / "grid.json"
    experiments.run_grid(square, CELLS[:4], out=out, progress=False)
    data = json.loads(out.read_text())
    data["rows"][0]["val"] = -123.0  # a finished cell must be reused, not re-run
    out.write_text(json.dumps(data))
    rows = experiments.run_grid(square, CELLS, out=out, progress=False)
    assert rows[0]["val"] == -123.0
    assert len(rows) == len(CELLS)
    assert rows[5] == {**CELLS[5], **square(CELLS[5])}


def test_parallel_equals_serial(tmp_path):
    serial = experiments.run_grid(square, CELLS[:6], progress=False)
    parallel = experiments.run_grid(square, CELLS[:6], processes=2, progress=False)
    assert parallel == serial


def test_tune_picks_the_best_mean_on_the_selection_metric():
    rows = experiments.run_grid(square, CELLS, progress=False)
    kept = experiments.tune(rows, select="val")
    assert {r["lr"] for r in kept} == {0.01}
    assert len(kept) == 6  # 2 contenders x 3 seeds
    summary = experiments.summarize(kept, "test")
    assert [s["contender"] for s in summary] == ["a", "b"]
    for s in summary:
        assert s["seeds"] == [0, 1, 2]
        assert s["min"] <= s["mean"] <= s["max"]
        assert s["min"] == pytest.approx(1.0 - 0.001)


def test_spot_check_reruns_a_stored_cell():
    rows = experiments.run_grid(square, CELLS, progress=False)
    stored, live = experiments.spot_check(
        square, rows, ["contender", "seed", "lr"], rng=random.Random(3)
    )
    assert stored in rows
    assert live == stored


def test_metrics_may_not_overwrite_the_cell():
    with pytest.raises(ValueError, match="lr"):
        experiments.run_grid(lambda c: {"lr": 1}, CELLS[:1], progress=False)


def test_cells_must_be_distinct():
    with pytest.raises(ValueError, match="distinct"):
        experiments.run_grid(square, CELLS[:1] * 2, progress=False)


def test_a_grid_for_a_subset_keeps_the_other_stored_rows(tmp_path):
    out = tmp_path / "grid.json"
    experiments.run_grid(square, CELLS, out=out, progress=False)
    data = json.loads(out.read_text())
    data["rows"].append({"contender": "old", "seed": 0, "lr": 1.0, "val": 0.5})
    del data["rows"][3]["lr"]  # a row of an older grid, without today's lr
    out.write_text(json.dumps(data))
    subset = CELLS[4:6]
    rows = experiments.run_grid(square, subset, out=out, progress=False)
    assert [{k: r[k] for k in subset[0]} for r in rows] == subset
    experiments.run_grid(square, [{**CELLS[0], "lr": 0.5}], out=out, progress=False)
    kept = experiments.load(out)["rows"]
    assert len(kept) == len(CELLS) + 2  # every stored row, and the new one
    for row in data["rows"]:
        assert row in kept
    assert kept[0] == {**CELLS[0], "lr": 0.5, **square({**CELLS[0], "lr": 0.5})}


def test_the_provenance_of_kept_rows_is_kept(tmp_path):
    out = tmp_path / "grid.json"
    experiments.run_grid(square, CELLS[:2], out=out, command="first", progress=False)
    assert "earlier" not in experiments.load(out)  # one run made every row
    experiments.run_grid(square, CELLS[2:3], out=out, command="second", progress=False)
    experiments.run_grid(square, CELLS[3:4], out=out, command="third", progress=False)
    stored = experiments.load(out)
    assert stored["provenance"]["command"] == "third"
    assert [p["command"] for p in stored["earlier"]] == ["first", "second"]
    assert len(stored["rows"]) == 4
