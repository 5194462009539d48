"""The built HTML edition, checked in a real browser (headless Chromium through Playwright).

Not part of the unit run (``pytest tests`` collects only ``test_*.py``): it needs a built book.
The Makefile's ``html-check`` target runs it after ``python -m llmbook.build html``::

    LLMBOOK_PROFILE=cpu python -m pytest -q tests/html/check_html.py

Every page is loaded twice, as readers open the book: from the disk (``file://``) and from a
local HTTP server on 127.0.0.1. A page fails on any console error or uncaught exception, a
formula MathJax did not typeset, an image that did not load, or a link inside the book whose
page or anchor does not exist. Search must work offline. Each page's first screen is saved at a
desktop and at a phone's width under ``_build/<profile>/screenshots/``, for a person to look at.

Chromium is Debian's (``make browser``); Playwright only drives it, and downloads nothing.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
import urllib.parse
from pathlib import Path

import pytest

from llmbook.build import refresh_target

REPO = Path(__file__).resolve().parents[2]
PROFILE = os.environ.get("LLMBOOK_PROFILE", "cpu")
# LLMBOOK_HTML checks another built book (the check's own trial runs use a tiny one)
BUILD = REPO / "_build" / PROFILE
HTML = Path(os.environ.get("LLMBOOK_HTML", BUILD / "stage" / "_build" / "html"))
SCREENSHOTS = Path(os.environ.get("LLMBOOK_SCREENSHOTS", BUILD / "screenshots"))
CHROMIUM = os.environ.get("LLMBOOK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# a word of Chapter 3's prose, and the page search must find for it
SEARCH_WORD = "queries"
SEARCH_PAGE = os.environ.get("LLMBOOK_SEARCH_PAGE", "chapters/03_attention.html")

PAGES = sorted(p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html")
               if not p.relative_to(HTML).parts[0].startswith("_")) if HTML.is_dir() else []

# Run in the page once it has loaded: wait for MathJax, load every image (lazy ones too), then
# report what the reader got. Raw TeX is looked for in prose only (code may hold "\(" in a regex).
INSPECT = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const images = [...document.images];
  images.forEach(img => { img.loading = "eager"; });
  await Promise.all(images.map(img => img.decode().catch(() => null)));
  const broken = images.filter(img => img.naturalWidth === 0).map(img => img.getAttribute("src"));
  const maths = [...document.querySelectorAll(".math")];
  const untypeset = maths.filter(m => !m.querySelector("mjx-container svg"))
                         .map(m => m.textContent.trim().slice(0, 80));
  const prose = [...document.querySelectorAll("article p, article li, article td, article dd")]
    .filter(el => !el.closest("pre, code, .highlight, .cell_output, mjx-container"));
  const rawTex = prose.map(el => el.textContent)
    .filter(t => t.includes("$$") || t.includes("\\\\(") || t.includes("\\\\["))
    .map(t => t.trim().slice(0, 80));
  const links = [...document.querySelectorAll("a[href]")].map(a => a.href);
  const ids = [...document.querySelectorAll("[id], a[name]")].map(el => el.id || el.name);
  return {broken, untypeset, rawTex, links, ids, maths: maths.length,
          svgs: document.querySelectorAll("mjx-container svg").length};
}"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: a free one
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    if not HTML.joinpath("index.html").is_file():
        pytest.fail(f"no built HTML at {HTML}; run "
                    f"`python -m llmbook.build --profile {PROFILE} html`")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}; run `make browser` (Debian's chromium package)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def bases(server):
    return {"file": HTML.as_uri() + "/", "http": server}


@functools.cache
def anchors(page_name: str) -> frozenset[str]:
    """The ids and anchor names a built page defines (Sphinx writes them all into the HTML)."""
    text = (HTML / page_name).read_text(encoding="utf-8", errors="replace")
    return frozenset(re.findall(r'\s(?:id|name)="([^"]+)"', text))


def _visit(browser, url: str, viewport: dict) -> tuple[object, list[str], dict]:
    page = browser.new_page(viewport=viewport)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console error: {m.text} ({m.location['url']})")
            if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    # a request the page's own redirect cancels (net::ERR_ABORTED) is not a missing resource
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} ({r.failure})")
            if r.failure != "net::ERR_ABORTED" else None)
    page.goto(url, wait_until="load")
    target = _refresh_target(url)
    if target is not None:  # the root index.html redirects (meta refresh) to the preface:
        page.wait_for_url(target, wait_until="load")  # inspect the page it lands on
    return page, errors, page.evaluate(INSPECT)


def _refresh_target(url: str) -> str | None:
    """Where a page's ``<meta http-equiv="refresh">`` sends the browser, or None."""
    base = HTML.as_uri() + "/"
    relative = url[len(base):] if url.startswith(base) else urllib.parse.urlsplit(url).path[1:]
    source = HTML / urllib.parse.unquote(relative or "index.html")
    target = refresh_target(source.read_text(encoding="utf-8", errors="replace"))
    return urllib.parse.urljoin(url, target) if target else None


def _page_path(url: str, base: str) -> tuple[str, str] | None:
    """The page (relative to the book) and anchor a link points to; None if outside the book."""
    if not url.startswith(base):
        return None
    parsed = urllib.parse.urlsplit(url[len(base):])
    path = urllib.parse.unquote(parsed.path) or "index.html"
    if path.endswith("/"):
        path += "index.html"
    return path, urllib.parse.unquote(parsed.fragment)


def _screenshot_name(page_name: str) -> str:
    return page_name.removesuffix(".html").replace("/", "__")


@pytest.mark.parametrize("scheme", ["file", "http"])
@pytest.mark.parametrize("page_name", PAGES)
def test_page_reads_cleanly(browser, bases, page_name, scheme):
    page, errors, report = _visit(browser, bases[scheme] + page_name, DESKTOP)
    try:
        if scheme == "file":  # the same pixels either way: one set of screenshots
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            name = _screenshot_name(page_name)
            page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
            page.set_viewport_size(PHONE)
            page.wait_for_timeout(200)  # let the theme's layout settle at the new width
            page.screenshot(path=str(SCREENSHOTS / f"{name}.phone.png"))
    finally:
        page.close()
    problems = list(errors)
    problems += [f"image did not load: {src}" for src in report["broken"]]
    problems += [f"formula not typeset: {tex!r}" for tex in report["untypeset"]]
    problems += [f"raw TeX in the text: {text!r}" for text in report["rawTex"]]
    if report["svgs"] < report["maths"]:
        problems.append(f"{report['maths']} formulas but {report['svgs']} typeset by MathJax")
    for link in report["links"]:
        target = _page_path(link, bases[scheme])
        if target is None:
            continue
        path, fragment = target
        if not (HTML / path).is_file():
            problems.append(f"link to a missing file: {link}")
        elif fragment and path.endswith(".html") and fragment not in anchors(path) | set(
                report["ids"] if path == page_name else ()):
            problems.append(f"link to a missing anchor: {link}")
    assert not problems, f"{page_name} over {scheme}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("scheme", ["file", "http"])
def test_search_finds_chapter_3(browser, bases, scheme):
    page = browser.new_page(viewport=DESKTOP)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    try:
        page.goto(bases[scheme] + f"search.html?q={SEARCH_WORD}", wait_until="load")
        page.wait_for_selector("#search-results ul.search li a", timeout=30_000)
        hits = page.eval_on_selector_all("#search-results ul.search li a", "as => as.map(a => a.href)")
    finally:
        page.close()
    assert not errors, errors
    assert any(h.split("?")[0].split("#")[0].endswith(SEARCH_PAGE) for h in hits), \
        f"searching {SEARCH_WORD!r} over {scheme} did not find {SEARCH_PAGE}: {hits}"


def test_the_book_has_pages():
    assert PAGES, f"no HTML pages under {HTML}; build them first"
    assert SEARCH_PAGE in PAGES, f"{SEARCH_PAGE} is not among the built pages: {PAGES}"
