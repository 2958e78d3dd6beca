import json
import subprocess
import sys

from minimodels.__main__ import list_chapters, main


def test_list_names_every_manifest_chapter_and_its_experiment(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip("\n") == list_chapters()
    assert "minimodels.h3" in out and "run h3" in out
    assert " 0  The quadratic wall" in out


def test_run_trains_and_writes_json(tmp_path, capsys):
    out = tmp_path / "row.json"
    args = [
        "run",
        "s4d",
        "--task",
        "induction",
        "--seq-len",
        "16",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--params",
        "8000",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "s4d on induction n=16: accuracy" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["results"][0]["contender"] == "s4d"
    assert "torch" in json.dumps(saved["environment"])


def test_speed_prints_a_row_per_length(capsys):
    assert main(["speed", "attention", "--lengths", "8", "16", "--dim", "16"]) == 0
    assert capsys.readouterr().out.count("ms") == 2


def test_module_runs_as_a_program():
    done = subprocess.run(
        [sys.executable, "-m", "minimodels", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "run" in done.stdout and "speed" in done.stdout
