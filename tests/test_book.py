"""The reader's edition (``make book``): it builds with no network, and in headless Chromium every
page loads, every image has loaded, every internal link (and #anchor) resolves, nothing is fetched
from outside the site and no script fails. A screenshot of the landing page is saved to
``.test-outputs/book/landing.png``.

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
    missing = [m for m in ("sphinx", "myst_nb", "sphinx_book_theme", "jupyter_server_mathjax")
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
                        rendered: document.querySelectorAll('span.MathJax, span.MathJax_SVG').length});
  if (!window.MathJax || !window.MathJax.Hub) return resolve(count());
  window.MathJax.Hub.Queue(() => resolve(count()));
})"""


def crawl(browser, base: str, screenshot: Path | None = None) -> dict:
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
        report = crawl(browser, base, SCREENSHOT)
    finally:
        server.shutdown()
    assert not report["problems"], "\n".join(report["problems"][:30])
    notebooks = sorted(p.stem for p in book_source().glob("[0-9][0-9]_*.ipynb"))
    exercises = sorted(p.stem for p in (ROOT / "exercises").glob("[0-9][0-9]_*_exercises.ipynb"))
    for name in notebooks:  # every notebook is a page, and shows its figures
        url = f"{base}notebooks/{name}.html"
        assert url in report["pages"], f"no page for {name}"
        assert len(report["images"][url]) >= 1, f"{name}: no figure on its page"
    for name in exercises:
        assert f"{base}exercises/{name}.html" in report["pages"]
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
