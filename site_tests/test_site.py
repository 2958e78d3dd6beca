"""The built site, opened from disk in headless Chromium: every page exists, maths is
rendered by the local MathJax, figures load, and no request leaves the machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from minimodels import manifest

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
# Hosts Chromium itself contacts (updates, time, accounts), never the page.
CHROMIUM_OWN = re.compile(r"(^|\.)(google\.com|googleapis\.com|gvt1\.com|gvt2\.com)$")


BOOK = manifest.load(ROOT)


def _browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    return found


def _pages() -> list[Path]:
    landing = Path(BOOK.landing).with_suffix(".html").name
    chapters = [Path(c.file).with_suffix(".html") for c in BOOK.chapters]
    back = [Path(f).with_suffix(".html") for f in BOOK.back_matter]
    return [HTML / landing, *(HTML / c for c in chapters), *(HTML / b for b in back)]


def _open(page: Path) -> tuple[str, list[str]]:
    """The DOM after scripts ran, and every URL the browser requested."""
    with tempfile.TemporaryDirectory() as tmp:
        netlog = Path(tmp) / "net.json"
        command = [
            _browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp}/profile",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--log-net-log={netlog}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            page.as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        log = netlog.read_text()
    urls = re.findall(r'"url":"([^"]+)"', log)
    return done.stdout, urls


@pytest.fixture(scope="module", params=_pages(), ids=lambda p: p.name)
def page(request) -> tuple[Path, str, list[str]]:
    path = request.param
    assert path.exists(), f"{path} was not built"
    dom, urls = _open(path)
    return path, dom, urls


def test_page_has_content(page):
    path, dom, _ = page
    assert "<h1" in dom and len(dom) > 5000, f"{path.name} looks empty"


def test_maths_is_rendered_locally(page):
    path, dom, urls = page
    assert "<mjx-merror" not in dom, f"MathJax error on {path.name}"
    chunks = dom.split('class="math notranslate nohighlight"')[1:]
    for chunk in chunks:
        assert "<mjx-container" in chunk[:400], f"unrendered maths on {path.name}"
    assert "$$" not in re.sub(r"<[^>]+>", "", dom.split("<body", 1)[-1])
    if chunks:
        # Chromium does not log file:// loads in its net log, so the proof that
        # MathJax came from the build is: its script tag points into the build,
        # the file is there, and the page made no remote request at all
        # (test_nothing_leaves_the_machine).
        scripts = re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', dom, re.I)
        assert scripts, f"no MathJax script on {path.name}"
        for src in scripts:
            assert not urlparse(src).scheme, f"MathJax from {src}"
            assert (path.parent / unquote(src).split("?")[0]).resolve().exists(), src


def test_figures_load(page):
    path, dom, _ = page
    for src in re.findall(r'<img[^>]+src="([^"]+)"', dom):
        if src.startswith("data:"):
            continue
        assert not urlparse(src).scheme.startswith("http"), f"remote image {src}"
        target = (path.parent / unquote(src)).resolve()
        assert target.exists(), f"missing image {src}"
        if target.suffix == ".png":
            assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"not a PNG: {src}"


def test_nothing_leaves_the_machine(page):
    path, dom, urls = page
    for url in urls:
        parsed = urlparse(url)
        if parsed.scheme in ("file", "data", "blob", "about", "chrome", ""):
            continue
        host = parsed.hostname or ""
        assert CHROMIUM_OWN.search(host), f"{path.name} requested {url}"
    for attr in re.findall(
        r'<(?:script|link|img)[^>]+(?:src|href)="(https?://[^"]+)"', dom
    ):
        pytest.fail(f"{path.name} references the remote resource {attr}")


def test_chapter_pages_show_figures():
    first_chapter = _pages()[1]
    dom, _ = _open(first_chapter)
    assert re.search(r'<img[^>]+src="[^"]+\.png"', dom), "chapter 0 shows no figure"


@pytest.mark.parametrize("chapter", BOOK.chapters, ids=lambda c: c.file)
def test_every_plotting_chapter_shows_its_plots(chapter):
    """A chapter that draws with matplotlib shows the drawings: the executions
    the build reused kept their outputs."""
    source = (ROOT / chapter.file).read_text()
    if "plt.show()" not in source:
        pytest.skip("draws nothing")
    page = (HTML / Path(chapter.file).with_suffix(".html")).read_text()
    assert re.search(r'<img[^>]+src="[^"]+\.png"', page), "no plot on the page"


def test_api_index_documents_every_chapter_module():
    dom, _ = _open(HTML / "api.html")
    for chapter in BOOK.chapters:
        assert f'id="module-{chapter.module}"' in dom, chapter.module
    assert 'id="minimodels.attention.attention_naive"' in dom  # a function's entry


def test_bibliography_lists_the_papers():
    dom, _ = _open(HTML / "bibliography.html")
    text = re.sub(r"<[^>]+>", "", dom)
    for title in (
        "Hyena Hierarchy",
        "Hungry Hungry Hippos",
        "LongNet",
        "FlashAttention",
    ):
        assert title.lower() in text.lower(), title  # the style lowercases titles
    entries = (ROOT / BOOK.bibliography).read_text().count("\n@")
    assert text.count("arXiv preprint") >= entries


def test_no_execution_reports_are_published():
    assert not (HTML / "reports").exists()
    assert not list(HTML.rglob("*.err.log"))


def test_no_page_shows_a_traceback():
    for page in _pages():
        text = page.read_text()
        assert "Traceback (most recent call last)" not in text, page.name
        assert 'class="output traceback' not in text, page.name


def test_the_build_reused_the_nbval_executions():
    """`make test` executes each chapter once: nbval stores every chapter it ran
    in the jupyter-cache, and the book build finds it there. A chapter the build
    executed itself would be stored with the build's own record instead."""
    from jupyter_cache import get_cache

    cache = get_cache(str(ROOT / "_build" / ".jupyter_cache"))
    sources: dict[str, set] = {}
    for record in cache.list_cache_records():
        source = (record.data or {}).get("source")
        sources.setdefault(Path(record.uri).name, set()).add(source)
    if not any("nbval" in found for found in sources.values()):
        pytest.skip("the book was built on its own (make book), without nbval")
    for chapter in BOOK.chapters:
        name = Path(chapter.file).name
        assert sources.get(name) == {"nbval"}, f"{name}: run by {sources.get(name)}"


def _chapter_pages() -> list[Path]:
    return [HTML / Path(c.file).with_suffix(".html") for c in BOOK.chapters]


@pytest.mark.parametrize("path", _chapter_pages(), ids=lambda p: p.name)
def test_chapter_has_a_run_box_with_its_notebook(path):
    dom, _ = _open(path)
    box = re.search(r'<div class="[^"]*run-this-chapter[^"]*">(.*?)</div>', dom, re.S)
    assert box, f"no 'Run this chapter' box on {path.name}"
    assert "2 CPU cores" in box.group(1)
    links = re.findall(r'href="([^"]+\.ipynb)"', box.group(1))
    assert links, f"no notebook download on {path.name}"
    target = (path.parent / unquote(links[0])).resolve()
    assert target.is_file() and HTML.resolve() in target.parents, links[0]
    assert target.name == path.with_suffix(".ipynb").name
    assert '"cells"' in target.read_text()


def test_no_caption_shows_a_directive_option():
    for page in _pages():
        for caption in re.findall(
            r"<figcaption>(.*?)</figcaption>", page.read_text(), re.S
        ):
            text = re.sub(r"<[^>]+>", "", caption).strip()
            option = re.search(
                r"(^|\s):(alt|width|name|align|scale|height|class):", text
            )
            assert option is None, f"{page.name}: caption {text[:60]!r}"


def test_no_thebe_or_binder_configuration():
    for page in _pages():
        text = page.read_text()
        assert "thebe" not in text.lower(), f"{page.name} embeds Thebe"
        assert "binder" not in text.lower(), f"{page.name} embeds Binder"
