"""`make lab` starts Jupyter at the repository root, inside jupytext.toml's
reach: a notebook saved through the server's contents API (what JupyterLab does
on save) rewrites its paired chapter in chapters/."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from book_fixtures import MYST_FRONT_MATTER

pytest.importorskip("jupytext")
pytest.importorskip("jupyter_server")

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = (
    MYST_FRONT_MATTER
    + """
# A chapter

```{code-cell} ipython3
x = 1
```
"""
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, token: str, data: dict | None = None) -> dict:
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(
        url, data=body, method="GET" if data is None else "PUT",
        headers={"Authorization": f"token {token}",
                 "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_a_save_in_lab_rewrites_the_chapter(tmp_path):
    shutil.copy(ROOT / "jupytext.toml", tmp_path)
    (tmp_path / "chapters").mkdir()
    chapter = tmp_path / "chapters" / "00-demo.md"
    chapter.write_text(CHAPTER)
    jupytext = Path(sys.executable).with_name("jupytext")
    subprocess.run([str(jupytext), "--sync", "--quiet", str(chapter)], check=True)
    assert (tmp_path / "notebooks" / "00-demo.ipynb").exists()

    port, token = _free_port(), "minimodels-test"
    # the same root and settings as `make lab`, without the browser front end
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--ServerApp.root_dir={tmp_path}",
         f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
         "--ServerApp.open_browser=False", "--ServerApp.port_retries=0",
         "--allow-root"],  # CI runs as root; Jupyter refuses root without it
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/api/contents/notebooks/00-demo.ipynb"
    try:
        for _ in range(480):  # up to 2 minutes on a busy machine
            try:
                model = _request(base, token)
                break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail("the Jupyter server did not start")
        notebook = model["content"]
        notebook["cells"][-1]["source"] = "x = 2  # edited in Lab"
        _request(base, token, {"type": "notebook", "format": "json",
                               "content": notebook})  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert "x = 2  # edited in Lab" in chapter.read_text()


def test_make_lab_serves_the_repository_root():
    makefile = (ROOT / "Makefile").read_text()
    lab = makefile.split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert '--ServerApp.root_dir="$(CURDIR)"' in lab
    assert "jupyter lab notebooks/" not in lab
