"""The book's manifest, read in one place: ``book.toml`` in a checkout, else the
copy the package ships (``minimodels/book.json``, generated from it).

book.toml lists the book's settings (``[book]``) and its chapters in order
(``[[chapters]]``: file, title, module, cpu_budget_s). ``load`` returns them as a
``Book`` of ``Chapter`` records, each with its number, parsed here and only here
from its file name (``chapters/NN-topic.md``). Unknown or missing keys, a file
name without its number and numbers out of order are errors naming the entry.

This module needs nothing but the standard library (``scripts/book.py`` loads it
from its file, before the package is installed and without importing torch),
and reading a manifest is the only thing it does; importing it reads nothing.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["Book", "Chapter", "load", "from_dict", "to_dict", "CHECKOUT"]

# the checkout holding this package, when there is one (a wheel has no book.toml)
CHECKOUT = Path(__file__).resolve().parent.parent
PACKAGED = "book.json"
_NUMBERED = re.compile(r"^chapters/(\d{2})-[\w.-]+\.md$")


@dataclass(frozen=True)
class Chapter:
    """One ``[[chapters]]`` entry of book.toml, with its number."""

    number: int  # the NN of chapters/NN-topic.md
    file: str  # chapters/NN-topic.md, relative to the book's root
    title: str
    module: str  # the library module the chapter builds
    cpu_budget_s: float  # CPU seconds the chapter may take on 2 cores

    @property
    def stem(self) -> str:  # NN-topic: the notebook's name too
        return Path(self.file).stem


@dataclass(frozen=True)
class Book:
    """book.toml: the ``[book]`` settings and the chapters, in order."""

    title: str
    author: str
    license: str
    copyright: str
    landing: str  # the landing page, e.g. intro.md
    timeout_s: int  # one cell's limit in the book build
    back_matter: tuple[str, ...]
    bibliography: str
    chapters: tuple[Chapter, ...]

    def chapter_of(self, module: str) -> int | None:
        """The number of the first chapter that builds ``module`` (None if none)."""
        return next((c.number for c in self.chapters if c.module == module), None)


def _keys(where: str, entry: dict, known: set[str]) -> None:
    unknown, missing = set(entry) - known, known - set(entry)
    if unknown or missing:
        raise ValueError(
            f"{where}: unknown keys {sorted(unknown)}, missing keys "
            f"{sorted(missing)}; the keys are {sorted(known)}"
        )


def _chapter(index: int, entry: dict) -> Chapter:
    known = {f.name for f in fields(Chapter)} - {"number"}
    _keys(f"chapter {index} of the manifest", entry, known)
    numbered = _NUMBERED.match(entry["file"])
    if numbered is None:
        raise ValueError(
            f"chapter file {entry['file']!r} must be named chapters/NN-topic.md"
        )
    return Chapter(number=int(numbered.group(1)), **entry)


def from_dict(raw: dict[str, Any]) -> Book:
    """A ``Book`` from the manifest's tables (book.toml or book.json, parsed)."""
    _keys("the manifest", raw, {"book", "chapters"})
    settings = dict(raw["book"])
    _keys("[book]", settings, {f.name for f in fields(Book)} - {"chapters"})
    chapters = tuple(_chapter(i, dict(c)) for i, c in enumerate(raw["chapters"]))
    numbers = [c.number for c in chapters]
    if not numbers or numbers != sorted(set(numbers)):
        raise ValueError(f"chapters must be listed in increasing order, got {numbers}")
    settings["copyright"] = str(settings["copyright"])
    settings["back_matter"] = tuple(settings["back_matter"])
    return Book(**settings, chapters=chapters)


def to_dict(book: Book) -> dict[str, Any]:
    """The manifest's tables again (what book.json holds): ``from_dict``'s inverse."""
    settings = asdict(book)
    chapters = list(settings.pop("chapters"))
    for chapter in chapters:
        del chapter["number"]  # it is the file name's, not a key of its own
    settings["back_matter"] = list(settings["back_matter"])
    return {"book": settings, "chapters": chapters}


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(path.read_text())


def load(root: str | Path | None = None) -> Book:
    """The manifest of the book at ``root`` (its book.toml), or by default of
    this checkout, or, installed from a wheel (no book.toml), the packaged copy.

    Read from a book.toml, every chapter file it names must exist.
    """
    folder = CHECKOUT if root is None else Path(root)
    path = folder / "book.toml"
    if root is None and not path.exists():
        return from_dict(json.loads(Path(__file__).with_name(PACKAGED).read_text()))
    if not path.exists():
        raise ValueError(f"root {folder} holds no book.toml")
    book = from_dict(_read_toml(path))
    for chapter in book.chapters:
        if not (folder / chapter.file).exists():
            raise ValueError(f"book.toml names {chapter.file}, which does not exist")
    return book
