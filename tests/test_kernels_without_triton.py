"""Chapter 5 on a machine without Triton (Triton ships Linux wheels only).

The chapter runs in a fresh Jupyter kernel whose Python cannot see Triton: a
``sitecustomize.py`` on PYTHONPATH sets ``sys.modules["triton"] = None``, so that
``importlib.util.find_spec("triton")`` returns None and ``import triton`` raises
ImportError, as where it is not installed. The chapter must run to the end: the
PyTorch ladder as usual, the kernels' code shown (read from the package's files),
and every check of a kernel skipped with a printed note, never silently. About 15
CPU-seconds: the kernel cells do no work without Triton.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jupytext")
pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "chapters" / "05-flash-attention.md"

# Executes the chapter (argv[1]) in a new kernel; prints one JSON list with the
# text each code cell printed, and the error of a cell that failed.
RUN = """
import json, sys
import jupytext, nbclient
nb = jupytext.read(sys.argv[1])
client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                 resources={"metadata": {"path": sys.argv[2]}})
try:
    client.execute()
finally:
    cells = [[o.get("text", "") or f"{o.get('ename')}: {o.get('evalue')}"
              for o in cell.get("outputs", []) if "text" in o or "ename" in o]
             for cell in nb.cells if cell.cell_type == "code"]
    print(json.dumps(cells))
"""


def _run_chapter_without_triton(tmp_path: Path) -> list[str]:
    """The text each code cell printed (or the error it raised)."""
    (tmp_path / "sitecustomize.py").write_text(
        'import sys\nsys.modules["triton"] = None\n'
    )
    path = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(CHAPTER), str(ROOT / "chapters")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=900,
    )  # fmt: skip
    assert done.stdout.strip(), done.stderr[-3000:]
    cells = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, f"{cells}\n{done.stderr[-3000:]}"
    return ["".join(texts) for texts in cells]


def test_chapter_5_runs_to_the_end_without_triton(tmp_path):
    """One test, so that the chapter runs once even when xdist splits a module."""
    outputs = _run_chapter_without_triton(tmp_path)
    printed, chapter = "\n".join(outputs), CHAPTER.read_text()

    # the note: Triton is missing, and how to install it
    assert "Triton is not installed: pip install 'minimodels[triton]'" in printed
    assert "(Linux only)" in printed and "figures/data" in printed

    # every check of a kernel is skipped visibly
    checks = re.findall(r"^kernel_check\((\w+)\)$", chapter, re.M)
    assert len(checks) >= 6
    for name in checks:
        assert f"Skipped without Triton: {name}" in printed

    # the kernels' code is shown
    shown = re.findall(r'^show\("(\w+)"', chapter, re.M)
    assert {"_fwd_kernel", "_bwd_dq_inner", "load", "FlashAttention"} <= set(shown)
    for name in shown:
        assert re.search(rf"^(def|class) {name}\b", printed, re.M), name
    assert "@triton.jit\ndef _fwd_kernel(" in printed

    # the PyTorch ladder after the kernel cells ran (and every cell ran: the
    # kernel exited 0 after the last one): its table of peak memory
    table = next(text for text in outputs if text.startswith("rung"))
    for rung in ("attention_naive", "attention_tiled", "attention_backward_tiled"):
        assert re.search(rf"^{rung} .* MiB", table, re.M), rung
