"""The book's manifest, its generated config, the README and the notebooks agree."""

import importlib
import importlib.util
import json
import re
from pathlib import Path

import jupytext
import pytest

from minimodels import manifest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("book", ROOT / "scripts" / "book.py")
book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(book)

MANIFEST = manifest.load(ROOT)
CHAPTERS = MANIFEST.chapters


def test_manifest_has_chapters_in_order():
    assert CHAPTERS, "book.toml lists no chapter"
    numbers = [c.number for c in CHAPTERS]
    assert numbers[0] == 0 and numbers == sorted(set(numbers)), "chapter order"
    for chapter in CHAPTERS:
        assert chapter.file == f"chapters/{chapter.number:02d}-{chapter.stem[3:]}.md"
        assert 0 < chapter.cpu_budget_s <= 180


def test_one_loader_reads_book_toml_and_the_packaged_copy_alike():
    """scripts/book.py, the tests and the CLI read the same manifest: book.toml
    in a checkout, the generated minimodels/book.json from a wheel."""
    packaged = json.loads((ROOT / "minimodels" / manifest.PACKAGED).read_text())
    assert manifest.from_dict(packaged) == MANIFEST
    assert manifest.from_dict(manifest.to_dict(MANIFEST)) == MANIFEST
    assert book.load_manifest(ROOT) == MANIFEST
    assert manifest.load() == MANIFEST  # this checkout, by default
    assert MANIFEST.chapter_of("minimodels.attention") == 0  # the first of 0 and 5
    assert MANIFEST.chapter_of("minimodels.lm") is None


def _raw(**chapter_changes) -> dict:
    raw = manifest.to_dict(MANIFEST)
    raw["chapters"][1] = {**raw["chapters"][1], **chapter_changes}
    return raw


@pytest.mark.parametrize(
    "raw, message",
    [
        (_raw(titel="x"), r"chapter 1 of the manifest: unknown keys \['titel'\]"),
        (_raw(file="chapters/long-convolutions.md"), "must be named chapters/NN"),
        (_raw(file="chapters/00-again.md"), "increasing order"),
        ({"book": {}, "chapters": []}, r"\[book\]: unknown keys \[\], missing"),
    ],
)
def test_a_bad_manifest_is_an_error_naming_the_entry(raw, message):
    with pytest.raises(ValueError, match=message):
        manifest.from_dict(raw)


def test_a_manifest_naming_a_missing_chapter_is_an_error(tmp_path):
    text = (ROOT / "book.toml").read_text()
    (tmp_path / "book.toml").write_text(text)
    with pytest.raises(ValueError, match="names chapters/00-the-quadratic-wall.md"):
        manifest.load(tmp_path)
    with pytest.raises(ValueError, match="holds no book.toml"):
        manifest.load(tmp_path / "elsewhere")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.file)
def test_chapter_is_a_myst_notebook_with_code(chapter):
    text = (ROOT / chapter.file).read_text()
    assert "extension: .md" in text and "format_name: myst" in text
    nb = jupytext.reads(text, fmt="md:myst")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 3, "a chapter without code cells tests nothing"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    first_heading = next(c for c in nb.cells if c.cell_type == "markdown")
    assert first_heading.source.startswith(f"# {chapter.title}")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.file)
def test_notebook_is_in_sync_with_its_chapter(chapter):
    md = ROOT / chapter.file
    ipynb = ROOT / "notebooks" / (chapter.stem + ".ipynb")
    assert ipynb.exists(), f"run `jupytext --sync {chapter.file}`"
    from_md = jupytext.read(md)
    from_nb = jupytext.read(ipynb)
    sources = [
        [c.source for c in nb.cells if c.cell_type == "code"]
        for nb in (from_md, from_nb)
    ]
    assert sources[0] == sources[1], f"{ipynb.name} is stale"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.file)
def test_chapter_module_is_documented(chapter):
    module = importlib.import_module(chapter.module)
    assert module.__doc__ and len(module.__doc__) > 100
    assert re.search(r"arXiv:\d{4}\.\d{4,5}", module.__doc__), "name the paper"


def test_generated_toc_follows_the_manifest():
    toc = book.toc(MANIFEST)
    chapters = toc["parts"][0]["chapters"]
    assert [c["file"] + ".md" for c in chapters] == [c.file for c in CHAPTERS]
    generated = ROOT / "_toc.yml"
    if generated.exists():
        for chapter in CHAPTERS:
            assert chapter.file.removesuffix(".md") in generated.read_text()


def test_config_serves_mathjax_locally_and_fails_on_warnings():
    config = book.config(MANIFEST)
    assert "sphinx-mathjax-offline" in config["sphinx"]["extra_extensions"]
    assert config["only_build_toc_files"] is True
    assert config["execute"]["execute_notebooks"] in ("cache", "force")


def test_readme_chapter_list_matches_the_manifest():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- chapters.*?-->\n(.*?)<!-- /chapters -->", readme, re.S)
    assert block, "README.md lost its chapter-list markers"
    assert block.group(1).strip() == book.chapter_list(MANIFEST)


def test_no_stray_notebooks_beside_the_chapters():
    assert not list((ROOT / "chapters").glob("*.ipynb"))


def test_environment_yml_installs_the_same_package():
    import yaml

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert '-e ".[all]"' in pip_section or "-e .[all]" in pip_section
    python = next(d for d in env["dependencies"] if str(d).startswith("python"))
    assert ">=3.10" in python, "environment.yml and pyproject disagree on Python"
    # torch before the package, at the floor pyproject asks for
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (torch_pin,) = [d for d in pyproject["project"]["dependencies"] if "torch" in d]
    assert "pytorch" + torch_pin.removeprefix("torch") in conda
    assert conda.index("pytorch>=2.4") < conda.index("pip")


def test_version_has_one_source():
    import minimodels

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "minimodels.__version__"
    }
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^version: (\S+)$", citation, re.M).group(1) == (
        minimodels.__version__
    )
    changelog = (ROOT / "CHANGELOG.md").read_text()
    top = re.search(r"^## (\S+) \((.+)\)$", changelog, re.M)
    assert top.group(1) == minimodels.__version__
    released = re.search(r"^date-released: (\S+)$", citation, re.M)
    # CITATION and CHANGELOG agree on whether (and when) it was released
    assert (released.group(1) if released else "unreleased") == top.group(2)


def test_dependencies_are_what_the_library_imports():
    import ast
    import sys

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {
        re.split(r"[<>=;\[ ]", d, maxsplit=1)[0]
        for d in pyproject["project"]["dependencies"]
    }
    imported = set()
    for path in (ROOT / "minimodels").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"minimodels"}
    optional = {"triton", "tomli", "tomllib", "matplotlib"}  # guarded imports
    assert declared == third_party - optional


def test_every_cited_arxiv_id_is_in_the_bibliography():
    bib = (ROOT / MANIFEST.bibliography).read_text()
    in_bib = set(re.findall(r"eprint = \{(\d{4}\.\d{4,5})\}", bib))
    sources = [ROOT / "intro.md", *ROOT.glob("chapters/*.md")]
    sources += [*ROOT.glob("minimodels/*.py"), *ROOT.glob("minimodels/kernels/*.py")]
    sources += [*ROOT.glob("benchmarks/*.py")]
    for path in sources:
        for arxiv_id in re.findall(r"arXiv:(\d{4}\.\d{4,5})", path.read_text()):
            assert arxiv_id in in_bib, f"{path.name} cites arXiv:{arxiv_id}"


def test_back_matter_and_api_index_cover_the_library():
    toc = book.toc(MANIFEST)
    back = [c["file"] for c in toc["parts"][-1]["chapters"]]
    assert back == [f.removesuffix(".md") for f in MANIFEST.back_matter]
    page = book.api_page(MANIFEST)
    for path in [*ROOT.glob("minimodels/*.py"), *ROOT.glob("minimodels/kernels/*.py")]:
        if not path.stem.startswith("_"):
            package = (
                "minimodels"
                if path.parent.name == "minimodels"
                else "minimodels.kernels"
            )
            assert f".. automodule:: {package}.{path.stem}" in page


def test_landing_road_map_names_each_chapter_and_its_module():
    intro = (ROOT / MANIFEST.landing).read_text()
    rows = re.findall(r"^\| (\d+)\. ([^|]+?) \|.*\| `([\w.]+)` \|$", intro, re.M)
    road_map = {int(number): (title, module) for number, title, module in rows}
    for chapter in CHAPTERS:
        number = chapter.number
        assert number in road_map, f"the road map lacks chapter {number}"
        assert road_map[number][1] == chapter.module, chapter.file


def test_the_generated_files_are_committed_and_up_to_date():
    import subprocess

    for path, text in book.generated(MANIFEST).items():
        assert path.read_text() == text, f"{path.name} is stale: run `make config`"
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", path.name],
            cwd=path.parent, capture_output=True,
        )  # fmt: skip
        assert tracked.returncode == 0, f"{path.name} is not committed"


def test_pre_commit_runs_the_same_lint_as_make_lint():
    import yaml

    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    (hook,) = [h for repo in config["repos"] for h in repo["hooks"]]
    assert hook["entry"] == "make lint" and hook["pass_filenames"] is False
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check ." in lint and "ruff format --check ." in lint


def test_bibliography_keys_and_ids_are_unique():
    bib = (ROOT / MANIFEST.bibliography).read_text()
    keys = re.findall(r"^@\w+\{([^,]+),", bib, re.M)
    ids = re.findall(r"eprint = \{([^}]+)\}", bib)
    assert len(keys) == len(set(keys)), "a repeated entry breaks the build"
    assert len(ids) == len(set(ids)), "two entries for one paper"
