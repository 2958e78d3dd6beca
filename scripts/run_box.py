"""A Sphinx extension of the book: a "Run this chapter" box on every chapter page.

It says how long the chapter takes on the book's reference machine (2 CPU cores,
the chapter's budget in book.toml), which of its cells need a GPU (those tagged
``skip-execution``: shown, not run, with the measured results read from
``figures/data/``), and offers the chapter as a Jupyter notebook to download
(the ``notebooks/NN-topic.ipynb`` that Jupytext generates, shipped with the site).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import book  # noqa: E402

GPU_TAG = re.compile(r"^:tags:.*\bskip-execution\b", re.M)


def box(chapter: Any, source: str) -> str:  # a manifest Chapter
    """The box, as MyST, for a chapter's manifest entry and source text."""
    minutes = chapter.cpu_budget_s / 60
    stem = chapter.stem
    gpu_cells = len(GPU_TAG.findall(source))
    if gpu_cells:
        gpu = (
            f"{gpu_cells} of its cells {'need' if gpu_cells > 1 else 'needs'} a GPU: "
            "shown, not run, with the results measured on a GPU read from "
            "`figures/data/`."
        )
    else:
        gpu = "Nothing in it needs a GPU."
    return (
        ":::{admonition} Run this chapter\n:class: tip run-this-chapter\n"
        f"It runs top to bottom in under {minutes:.0f} minutes on 2 CPU cores. {gpu} "
        f"{{download}}`Download it as a notebook <../notebooks/{stem}.ipynb>` "
        '(`pip install "minimodels[book]"` gives what it imports), or open '
        "the whole book with `make lab`.\n:::\n"
    )


def _add_box(app, docname: str, source: list[str]) -> None:
    chapters = {
        c.file.removesuffix(".md"): c for c in book.load_manifest(ROOT).chapters
    }
    if docname not in chapters:
        return
    text = source[0]
    heading = re.search(r"^# .+\n", text, re.M)
    if heading is None:
        return
    at = heading.end()
    source[0] = text[:at] + "\n" + box(chapters[docname], text) + "\n" + text[at:]


def setup(app) -> dict:
    app.connect("source-read", _add_box)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
