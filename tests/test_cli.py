import json
import subprocess
import sys

import pytest

from minimodels import __version__, bakeoff
from minimodels.__main__ import _parser, list_chapters, main

TOY = ["--steps", "2", "--batch-size", "4", "--params", "8000"]


def test_list_names_every_manifest_chapter_and_its_experiment(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip("\n") == list_chapters()
    assert "minimodels.h3" in out and "run h3" in out
    assert " 0  The quadratic wall" in out


def test_run_defaults_are_the_books_recall_recipe():
    args = _parser().parse_args(["run", "attention"])
    assert args.task == "recall" and args.device == "cpu" and args.lr is None
    assert args.threads == 1
    assert (args.steps, args.batch_size, args.params) == (
        bakeoff.RECIPE["steps"], bakeoff.RECIPE["batch_size"],
        bakeoff.RECIPE["params"],
    )  # fmt: skip


def test_run_recall_prints_test_accuracy_and_writes_every_seed(tmp_path, capsys):
    out = tmp_path / "rows.json"
    args = ["run", "attention", "--seq-len", "7", *TOY, "--seeds", "2", "--seed", "3"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "attention on recall n=7, seed 3: test accuracy" in printed
    assert "seed 4" in printed and "over 2 seeds: mean" in printed
    rows = json.loads(out.read_text())["results"]
    assert [r["seed"] for r in rows] == [3, 4]
    assert all(r["lr"] == bakeoff.BEST_LR["attention"] for r in rows)
    assert all(0 <= r["test_acc"] <= 1 for r in rows)


def test_run_other_tasks_and_writes_json(tmp_path, capsys):
    out = tmp_path / "row.json"
    args = ["run", "s4d", "--task", "induction", "--seq-len", "16", *TOY]
    assert main([*args, "--out", str(out)]) == 0
    assert "s4d on induction n=16, seed 0: accuracy" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["results"][0]["contender"] == "s4d"
    assert "torch" in json.dumps(saved["environment"])


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--seq-len", "0"], "--seq-len: '0' is not a positive integer"),
        (["--steps", "-3"], "--steps: '-3' is not a positive integer"),
        (["--lr", "inf"], "--lr: 'inf' is not a finite number > 0"),
        (["--lr", "nan"], "--lr: 'nan' is not a finite number > 0"),
        (["--lr", "0"], "--lr: '0' is not a finite number > 0"),
        (["--seed", "-1"], "--seed: '-1' is not an integer >= 0"),
        (["--device", "meta"], "device must be cpu or cuda"),
        (["--device", "gpu0"], "'gpu0' is not a device"),
        (["--threads", "0"], "--threads: '0' is not a positive integer"),
    ],
)
def test_bad_values_are_refused_by_name(bad, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "attention", *bad])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_library_errors_exit_nonzero_with_a_message_not_a_traceback(capsys):
    # recall needs an odd length: the library's check, caught by the CLI
    assert main(["run", "attention", "--seq-len", "8", *TOY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m minimodels run: error: seq_len must be odd")


def test_speed_refuses_meta_and_defaults_to_cuda_only_when_available(capsys):
    import torch

    with pytest.raises(SystemExit):
        main(["speed", "attention", "--device", "meta"])
    assert "device must be cpu or cuda" in capsys.readouterr().err
    args = _parser().parse_args(["speed", "attention"])
    assert args.device == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["speed", "attention", "--device", "cuda"])
        assert "cuda is not available" in capsys.readouterr().err


def test_speed_prints_a_row_per_length(capsys):
    args = ["speed", "attention", "--lengths", "8", "16", "--dim", "16"]
    assert main([*args, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("ms") == 2


def test_module_runs_as_a_program_and_knows_its_version():
    def program(*args):
        return subprocess.run(
            [sys.executable, "-m", "minimodels", *args],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    assert "run" in program("--help") and "speed" in program("--help")
    assert program("--version").strip() == __version__
