"""The reader's edition (``make book``): it builds with no network, and in headless Chromium every
page loads, every image has loaded, every internal link (and #anchor) resolves, nothing is fetched
from outside the site and no script fails. A screenshot of the landing page is saved to
``.test-outputs/book/landing.png``.

It must also read as a course book, at a desktop's 1400 px and a phone's 400 px: no element wider
than the article (outputs and code wrap), display equations centred, every figure numbered and
captioned, one search box; the landing page speaks to readers, a how-to page holds the glossary,
each chapter links its exercises and the instructors' page holds the solutions.

The site is built from ``executed/gemma-3-270m`` when it holds the executed notebooks, else from
the nbval references (``executed/reference``); ``DISSECT_BOOK_SOURCE`` chooses another folder.
Without the book extras or Chromium these tests skip, unless ``DISSECT_REQUIRE_BOOK=1`` (set by
``make test``, which installs both) turns the skip into a failure.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urldefrag

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / ".test-outputs" / "book" / "landing.png"


def _need(ok, why: str) -> None:
    if not ok:
        (pytest.fail if os.environ.get("DISSECT_REQUIRE_BOOK") == "1" else pytest.skip)(why)


def book_source() -> Path:
    if os.environ.get("DISSECT_BOOK_SOURCE"):
        return Path(os.environ["DISSECT_BOOK_SOURCE"])
    full = ROOT / "executed" / "gemma-3-270m"
    return full if len(list(full.glob("[0-9][0-9]_*.ipynb"))) >= 4 else ROOT / "executed" / "reference"


def _offline_prefix() -> list[str]:
    """``unshare -n``: the build runs in a network namespace with no interface but loopback."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n"]
    return []


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    missing = [m for m in ("sphinx", "myst_nb", "sphinx_book_theme", "sphinx-mathjax-offline")
               if importlib.util.find_spec(m) is None]
    _need(not missing, f"the book extras are not installed ({', '.join(missing)}): pip install -e '.[book]'")
    out = tmp_path_factory.mktemp("book")
    prefix = _offline_prefix()
    env = {**os.environ, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}  # and nowhere to go anyway
    result = subprocess.run(prefix + [sys.executable, "-m", "utils.companion.book", "--source", str(book_source()),
                                      "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"built from {book_source()} {'with no network (unshare -n)' if prefix else 'with proxies pointing nowhere'}")
    return out / "html"


@pytest.fixture(scope="module")
def browser():
    _need(importlib.util.find_spec("playwright") is not None, "playwright is not installed: pip install -e '.[book]'")
    _need(CHROMIUM.exists(), "Chromium is missing: apt-get install chromium (make test does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(folder: Path):
    """A loopback HTTP server for ``folder`` (closed by the caller); its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


MATH_RENDERED = """() => new Promise(resolve => {
  const count = () => ({math: document.querySelectorAll('.math.nohighlight').length,  // Sphinx's formulas
                        rendered: document.querySelectorAll('span.MathJax, span.MathJax_SVG, mjx-container').length});
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise)  // MathJax 3
    return window.MathJax.startup.promise.then(() => resolve(count()));
  if (!window.MathJax || !window.MathJax.Hub) return resolve(count());
  window.MathJax.Hub.Queue(() => resolve(count()));  // MathJax 2
})"""

WIDTHS = (1400, 400)
"""A desktop's and a phone's viewport width."""

COURSE = """() => {
  const out = {wide: [], math: [], figures: [], search: 0, figs: 0};
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const box = article.getBoundingClientRect();
  const visible = e => { const r = e.getBoundingClientRect(); const s = getComputedStyle(e);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none'; };
  const describe = e => e.tagName.toLowerCase() + (e.className && typeof e.className === 'string' ? '.' + e.className.split(' ')[0] : '') + ': ' + (e.textContent || e.getAttribute('src') || '').trim().slice(0, 60);
  for (const e of article.querySelectorAll('pre, table, img, mjx-container, div.cell_output, div.highlight, figure, p')) {
    if (!visible(e)) continue;
    const r = e.getBoundingClientRect();
    if (r.right > box.right + 2 || e.scrollWidth > e.clientWidth + 2 && getComputedStyle(e).overflowX !== 'visible')
      out.wide.push(describe(e));
  }
  for (const m of article.querySelectorAll('mjx-container[display="true"], .MathJax_Display, div.math')) {
    if (!visible(m)) continue;
    const inner = m.querySelector('mjx-math, .MathJax, span.math') || m;
    const parent = m.parentElement.getBoundingClientRect(), r = inner.getBoundingClientRect();
    if (Math.abs((r.left - parent.left) - (parent.right - r.right)) > 20) out.math.push(describe(m));
  }
  for (const img of article.querySelectorAll('img')) {
    if (!visible(img)) continue;
    out.figs += 1;
    const fig = img.closest('figure');
    const cap = fig && fig.querySelector('figcaption');
    if (!cap || !/^Fig\\. ?\\d+/.test(cap.textContent.trim()) || cap.textContent.trim().length < 12)
      out.figures.push(img.getAttribute('src'));
  }
  out.search = Array.from(document.querySelectorAll('input[type="search"], .search-button-field, .search-button, form.bd-search'))
    .filter(e => visible(e) && !e.closest('dialog')).length;
  return out;
}"""
"""Per page: elements wider than the article (or scrolling sideways), display equations not
centred, images without a numbered caption ("Fig. N ..."), visible search boxes."""


def course_problems(page, url: str) -> list[str]:
    """The course-book checks of the page open in ``page``, at every width of :data:`WIDTHS`."""
    found = []
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(150)
        page.evaluate(MATH_RENDERED)
        c = page.evaluate(COURSE)
        found += [f"{url} at {width} px: wider than its container: {w}" for w in c["wide"]]
        if width == WIDTHS[0]:
            found += [f"{url}: display math not centred: {m}" for m in c["math"]]
            found += [f"{url}: figure without a number and caption: {f}" for f in c["figures"]]
            if c["search"] != 1:
                found.append(f"{url}: {c['search']} search boxes (want one)")
    page.set_viewport_size({"width": 1280, "height": 900})
    return found


def crawl(browser, base: str, screenshot: Path | None = None, course: bool = False) -> dict:
    """Visit every page reachable from ``base + 'index.html'``. Returns the pages visited, the
    images per page, and the problems: pages that fail to load, images that did not load, internal
    links (and anchors) that do not resolve, requests that left the site, script errors."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside, errors, problems = [], [], []

    def route(r):
        if r.request.url.startswith((base, "data:", "about:")):  # about:blank: MathJax probing its fonts
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("pageerror", lambda err: errors.append(f"{page.url}: {err}"))
    page.on("response", lambda r: problems.append(f"{page.url}: {r.url} answered HTTP {r.status}")
            if r.status >= 400 and r.request.resource_type != "document" else None)
    todo, ids, images, links, status, math = [base + "index.html"], {}, {}, {}, {}, {}
    while todo:
        url = todo.pop(0)
        if url in ids:
            continue
        response = page.goto(url, wait_until="load")
        status[url] = response.status if response else None
        ids[url] = set()
        if status[url] != 200:
            continue
        page.evaluate("document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
        page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=15000)
        images[url] = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.naturalWidth])")
        problems += [f"{url}: image {src} did not load" for src, width in images[url] if not width]
        ids[url] = set(page.eval_on_selector_all("[id], a[name]", "els => els.map(e => e.id || e.name)"))
        formulas = page.evaluate(MATH_RENDERED)
        if formulas["math"] and formulas["rendered"] < formulas["math"]:
            problems.append(f"{url}: {formulas['rendered']} of {formulas['math']} formulas rendered by MathJax")
        math[url] = formulas["math"]
        if course:
            problems += course_problems(page, url)
        if screenshot is not None and url == base + "index.html":
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
            target, fragment = urldefrag(href)
            if not target.startswith(base):
                continue
            links.setdefault((target, fragment), set()).add(url)
            if target.endswith(".html") and target not in ids:
                todo.append(target)
    for (target, fragment), sources in sorted(links.items()):
        where = f"(linked from {sorted(sources)[0]})"
        if target not in status:
            status[target] = page.request.get(target).status
        if status[target] != 200:
            problems.append(f"link to {target} {where}: HTTP {status[target]}")
        elif fragment and target in ids and unquote(fragment) not in ids[target]:
            problems.append(f"link to {target}#{fragment} {where}: no such anchor")
    page.close()
    problems += [f"request outside the site: {u}" for u in outside] + [f"script error: {e}" for e in errors]
    return {"pages": [u for u in ids if u.endswith(".html") and status[u] == 200], "images": images, "links": links, "math": math,
            "problems": problems}


def test_site_pages_images_and_links(site, browser):
    server, base = serve(site)
    try:
        report = crawl(browser, base, SCREENSHOT, course=True)
    finally:
        server.shutdown()
    assert not report["problems"], f"{len(report['problems'])} problems:\n" + "\n".join(report["problems"][:40])
    notebooks = sorted(p.stem for p in book_source().glob("[0-9][0-9]_*.ipynb"))
    exercises = sorted(p.stem for p in (ROOT / "exercises").glob("[0-9][0-9]_*_exercises.ipynb"))
    for name in notebooks:  # every notebook is a page, and shows its figures
        url = f"{base}notebooks/{name}.html"
        assert url in report["pages"], f"no page for {name}"
        assert len(report["images"][url]) >= 1, f"{name}: no figure on its page"
    for name in exercises:
        assert f"{base}exercises/{name}.html" in report["pages"]
    lab = f"{base}lab.html"  # the lab handout, with its slide figure loaded (the crawl checks every image loads)
    assert lab in report["pages"] and any(src.endswith("recall_schematic.png") for src, _ in report["images"][lab])
    assert any(src.endswith("information_flow.png") for src, _ in report["images"][base + "index.html"])
    assert SCREENSHOT.exists() and SCREENSHOT.stat().st_size > 10_000
    assert sum(report["math"].values()) > 0, "no formula on any page: is MathJax still wired?"
    print(f"{len(report['pages'])} pages, {sum(map(len, report['images'].values()))} images, "
          f"{sum(report['math'].values())} formulas rendered offline, "
          f"{len(report['links'])} internal links; screenshot {SCREENSHOT.relative_to(ROOT)}")


def test_the_checks_catch_a_broken_link_a_missing_image_and_an_outside_request(site, browser, tmp_path):
    """The crawl is a guard that can fail: a copy of the site with one broken link, one image
    that cannot load and one script from the internet is reported on all three counts."""
    broken = tmp_path / "html"
    shutil.copytree(site, broken)
    index = broken / "index.html"
    index.write_text(index.read_text().replace(
        "</body>", '<a href="notebooks/no_such_page.html">broken</a><a href="index.html#no-such-anchor">anchor</a>'
                   '<img src="_images/no_such_figure.png"><script src="https://cdn.invalid/x.js"></script></body>'))
    server, base = serve(broken)
    try:
        problems = crawl(browser, base)["problems"]
    finally:
        server.shutdown()
    assert any("no_such_page.html" in p and "HTTP 404" in p for p in problems), problems
    assert any("#no-such-anchor" in p for p in problems), problems
    assert any("no_such_figure.png did not load" in p for p in problems), problems
    assert any("outside the site: https://cdn.invalid/x.js" in p for p in problems), problems


def test_the_pages_a_course_book_has(site):
    """A landing page for readers, a how-to page with prerequisites and a glossary, chapters that
    link their exercises, an instructors' page with the solutions, and no Colab link while the
    repository's address is the placeholder."""
    from utils import setup as project_setup

    index = " ".join(re.sub(r"<[^>]+>", "", (site / "index.html").read_text()).split())  # the text a reader sees
    assert "badges above" not in index and "make readme" not in index and "make test" not in index
    how = (site / "how_to_use.html").read_text()
    assert "Prerequisites" in how and "Glossary" in how
    for term in ("sink", "logit lens", "extraction event", "attributes rate", "knockout window", "W_V W_O map"):
        assert f"<dt" in how and term in how, term
    for chapter in sorted((site / "notebooks").glob("0[0-5]_*.html")):
        assert "Exercises for this chapter" in chapter.read_text() and "_exercises.html" in chapter.read_text(), chapter.name
    assert "04_interventions_exercises.html" in (site / "notebooks" / "03_attribute_extraction.html").read_text()
    instructors = re.sub(r"<[^>]+>", "", (site / "instructors.html").read_text())  # highlighted code, as text
    assert "def subject_positions" in instructors
    for solution in (ROOT / "exercises" / "solutions").glob("*.py"):  # one section per solutions file
        assert solution.stem.replace("_", " ") in instructors, solution.name
    if not project_setup.published():
        assert not any("colab.research.google.com" in p.read_text() for p in site.rglob("*.html"))
        assert "REPOSITORY" in how


def test_the_lab_is_a_page_with_its_slide_figure(tmp_path):
    """exercises/LAB.md is staged as the first page of the exercises, with the slide figure of the
    book's model (``make lab-figure``) copied beside it and placed under the line that names it."""
    _need(importlib.util.find_spec("sphinx-mathjax-offline") is not None, "the book extras are not installed")
    from utils.companion import book, lab_figure

    source = book_source()
    model = book.notebook_parameters(sorted(source.glob("[0-9][0-9]_*.ipynb"))[0])["model"]
    staged = book.stage(source, tmp_path / "src")
    page = (staged / "lab.md").read_text()
    figure = f"figures/{model}/{lab_figure.NAME}.png"
    assert page.startswith("# A 90-minute lab") and f"```{{figure}} {figure}" in page
    assert (staged / figure).read_bytes() == (ROOT / figure).read_bytes()
    named = next(k for k, line in enumerate(page.splitlines()) if lab_figure.NAME in line and "figure}" not in line)
    assert page.splitlines().index(f"```{{figure}} {figure}") == named + 2
    index = (staged / "index.md").read_text()
    exercises = index.split(":caption: Exercises", 1)[1].split("```", 1)[0].split()
    assert exercises[2] == "lab", exercises  # after ":maxdepth: 1": the lab first


def test_the_course_checks_catch_an_overflow_a_right_aligned_equation_and_a_bare_figure(site, browser, tmp_path):
    """The course-book checks can fail: a copy of a page with a non-wrapping wide output, a display
    equation pushed right, an image without a caption and a second search box."""
    broken = tmp_path / "html"
    shutil.copytree(site, broken)
    page_path = broken / "how_to_use.html"
    page_path.write_text(page_path.read_text().replace("</article>", (
        '<pre style="white-space: pre; overflow-x: auto">' + "x" * 400 + '</pre>'
        '<img src="_static/no_caption.png" width="50" height="50" style="width:50px;height:50px">'
        '<input type="search" style="width:80px"></article>'), 1).replace(
        "</head>", '<style>mjx-container[display="true"] { text-align: right !important; }</style></head>', 1))
    shutil.copy(next(site.rglob("*.png")), broken / "_static" / "no_caption.png")
    server, base = serve(broken)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(base + "how_to_use.html", wait_until="load")
        page.evaluate(MATH_RENDERED)
        found = course_problems(page, "how_to_use.html")
    finally:
        page.close()
        server.shutdown()
    assert any("at 1400 px: wider than its container: pre" in p for p in found), found
    assert any("display math not centred" in p for p in found), found
    assert any("figure without a number and caption" in p for p in found), found
    assert any("2 search boxes" in p for p in found), found
