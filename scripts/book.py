"""Generate the Jupyter Book config (``_config.yml``, ``_toc.yml``) from book.toml.

The generated files are committed (a bare ``jupyter-book build .`` then works on a
fresh clone) and tested to be up to date; ``make`` regenerates them.

    python scripts/book.py config   # write _config.yml, _toc.yml and api.md
    python scripts/book.py build    # build the site; refuse it if a chapter fails
    python scripts/book.py list     # print the chapter list as Markdown
    python scripts/book.py files    # print the chapter files, in order

A chapter file that book.toml does not list is a draft: it is neither built nor
executed.

book.toml is the single manifest of the book; the two YAML files are generated
from it, and tested, so they can never disagree with it. So is ``api.md``, the
index of the library's API, which lists every module of the ``minimodels``
package (autodoc renders their docstrings), and ``minimodels/book.json``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _manifest_module():
    """``minimodels.manifest``, the one reader of book.toml; when the package is
    not imported yet, loaded from its file: it needs only the standard library,
    so ``make`` lists the chapters before the package is installed and without
    importing torch."""
    if "minimodels.manifest" in sys.modules:
        return sys.modules["minimodels.manifest"]
    name = "_minimodels_manifest"
    if name not in sys.modules:
        path = ROOT / "minimodels" / "manifest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
    return sys.modules[name]


manifest = _manifest_module()


def load_manifest(root: Path = ROOT):
    """The book at ``root``: ``minimodels.manifest.load``."""
    return manifest.load(root)


def _yaml(value: object, indent: int = 0) -> str:
    """A tiny YAML writer for dicts, lists and scalars (JSON scalars are YAML)."""
    pad = "  " * indent
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:\n{_yaml(item, indent + 1)}")
            else:
                lines.append(f"{pad}{key}: {json.dumps(item)}")
        return "\n".join(lines)
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, dict):
                body = _yaml(item, indent + 1).lstrip()
                lines.append(f"{pad}- {body}")
            else:
                lines.append(f"{pad}- {json.dumps(item)}")
        return "\n".join(lines)
    return f"{pad}{json.dumps(value)}"


# Jupyter Book's own extensions less sphinx_thebe, whose Thebe/Binder settings
# and script would point every page at public servers in an offline book; then
# the book's: local MathJax, autodoc for the API page, the "Run this chapter" box,
# the bibliography. A full list here replaces Jupyter Book's.
EXTENSIONS = [
    "sphinx_togglebutton", "sphinx_copybutton", "myst_nb", "jupyter_book",
    "sphinx_comments", "sphinx_external_toc", "sphinx.ext.intersphinx",
    "sphinx_design", "sphinx_book_theme",
    "sphinx-mathjax-offline", "sphinx.ext.autodoc", "run_box", "sphinxcontrib.bibtex",
]  # fmt: skip


def config(book) -> dict:
    return {
        "title": book.title,
        "author": book.author,
        "copyright": book.copyright,
        "only_build_toc_files": True,
        "exclude_patterns": [
            "_build",
            "notebooks",
            ".*",
            "**/.*",
            "README.md",
            ".venv",
            "tests",
        ],
        "execute": {
            "execute_notebooks": "cache",
            "timeout": book.timeout_s,
            "allow_errors": False,
        },
        "parse": {"myst_enable_extensions": ["dollarmath", "amsmath", "colon_fence"]},
        "html": {"use_repository_button": False},
        "launch_buttons": {"notebook_interface": "jupyterlab", "binderhub_url": ""},
        "bibtex_bibfiles": [book.bibliography],
        "sphinx": {
            "extra_extensions": ["sphinx-mathjax-offline", "sphinx.ext.autodoc"],
            "local_extensions": {"run_box": "scripts"},  # scripts/run_box.py
            "config": {
                "extensions": EXTENSIONS,
                "nb_execution_show_tb": True,
                "nb_output_stderr": "remove",
                "html_show_copyright": True,
                "autodoc_member_order": "bysource",
                "autodoc_typehints": "description",
                "autodoc_inherit_docstrings": False,
                "bibtex_reference_style": "author_year",
            },
        },
    }


def toc(book) -> dict:
    chapters = [{"file": c.file.removesuffix(".md")} for c in book.chapters]
    back = [{"file": f.removesuffix(".md")} for f in book.back_matter]
    return {
        "format": "jb-book",
        "root": book.landing.removesuffix(".md"),
        "parts": [
            {"caption": "Chapters", "chapters": chapters},
            {"caption": "Reference", "chapters": back},
        ],
    }


def library_modules(root: Path = ROOT) -> list[str]:
    """Every public module of the package, ``minimodels.kernels`` included."""
    names = []
    for package, folder in (
        ("minimodels", "minimodels"),
        ("minimodels.kernels", "minimodels/kernels"),
    ):
        for info in pkgutil.iter_modules([str(root / folder)]):
            if not info.name.startswith("_"):
                names.append(f"{package}.{info.name}")
    return sorted(names)


def api_page(book, root: Path = ROOT) -> str:
    lines = [
        "# The minimodels API",
        "",
        "Every module of the library, with its docstrings. Each chapter builds one",
        "module; the shared ones (`lm`, `data`, `train`, `bench`, `testing`) serve",
        "them all. `python -m minimodels list` shows the same map from a terminal.",
        "",
    ]
    for name in library_modules(root):
        number = book.chapter_of(name)
        where = f" (chapter {number})" if number is not None else ""
        lines += [
            f"## `{name}`{where}",
            "",
            "```{eval-rst}",
            f".. automodule:: {name}",
            "   :members:",
            "```",
            "",
        ]
    return "\n".join(lines)


def chapter_list(book) -> str:
    return "\n".join(
        f"- {c.number}. [{c.title}]({c.file}) — `{c.module}`" for c in book.chapters
    )


def build(root: Path = ROOT) -> int:
    """Build the site under ``root/_build/html`` with warnings as errors.

    A chapter whose execution fails fails the build (its cell and traceback are
    printed, ``nb_execution_show_tb``), and then no site is left behind: a
    reader never opens a page showing a traceback. The execution reports
    (``reports/``, error logs) are never part of the site.
    """
    html = root / "_build" / "html"
    shutil.rmtree(html, ignore_errors=True)
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [str(jupyter_book), "build", str(root), "--warningiserror"]
    result = subprocess.run([*command, "--keep-going", "--quiet"], env=env)
    if result.returncode != 0:
        shutil.rmtree(html, ignore_errors=True)
        print(
            "\nThe book did not build: a chapter failed or Sphinx warned (the cell "
            "and the error are above). No site was written.",
            file=sys.stderr,
        )
        return 1
    shutil.rmtree(html / "reports", ignore_errors=True)
    return 0


def generated(book, root: Path = ROOT) -> dict[Path, str]:
    """Every file made from book.toml (and the package), by path. They are
    committed, so that a fresh clone builds with a bare ``jupyter-book build .``
    and the wheel ships the chapter table; a test checks they are up to date."""
    header = "# Generated from book.toml by scripts/book.py: do not edit.\n"
    note = "<!-- Generated from the package by scripts/book.py: do not edit. -->\n"
    return {
        root / "_config.yml": header + _yaml(config(book)) + "\n",
        root / "_toc.yml": header + _yaml(toc(book)) + "\n",
        root / "api.md": note + api_page(book, root),
        # the manifest the installed package reads (``python -m minimodels list``
        # from a wheel, far from book.toml)
        root / "minimodels" / manifest.PACKAGED: json.dumps(
            manifest.to_dict(book), indent=1
        )
        + "\n",
    }


def main(argv: list[str]) -> None:
    try:
        book = load_manifest()
    except ValueError as error:
        raise SystemExit(f"book.toml: {error}") from None
    command = argv[1] if len(argv) > 1 else "config"
    if command == "config":
        for path, text in generated(book).items():
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
    elif command == "build":
        sys.exit(build())
    elif command == "list":
        print(chapter_list(book))
    elif command == "files":  # the chapters in the book, for make
        print(" ".join(c.file for c in book.chapters))
    else:
        raise SystemExit(
            f"unknown command {command!r}: use config, build, list or files"
        )


if __name__ == "__main__":
    main(sys.argv)
