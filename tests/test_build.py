"""`make book` refuses a failing chapter: a tiny book with one chapter whose cell
raises does not build, and no site is left behind to publish."""

import importlib.util
from pathlib import Path

import pytest
from book_fixtures import MYST_FRONT_MATTER

pytest.importorskip("jupyter_book")

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("book", ROOT / "scripts" / "book.py")
book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(book)


def _tiny_book(root: Path, cell: str) -> None:
    (root / "_config.yml").write_text(
        "title: tiny\nonly_build_toc_files: true\n"
        "exclude_patterns: [_build]\n"
        "execute:\n  execute_notebooks: force\n  timeout: 60\n"
        "sphinx:\n  config:\n    nb_execution_show_tb: true\n"
    )
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nchapters:\n  - file: chapter\n"
    )
    (root / "intro.md").write_text("# Tiny\n\nA book of one chapter.\n")
    (root / "chapter.md").write_text(
        MYST_FRONT_MATTER + f"\n# A chapter\n\n```{{code-cell}} ipython3\n{cell}\n```\n"
    )


def test_a_failing_chapter_stops_the_build_and_leaves_no_site(tmp_path, capfd):
    _tiny_book(tmp_path, 'raise RuntimeError("the claim is false")')
    assert book.build(tmp_path) == 1
    assert not (tmp_path / "_build" / "html").exists()
    out, err = capfd.readouterr()
    assert "the claim is false" in out + err  # the cell's error is shown
    assert "No site was written" in err
