"""`make explore`'s page: notebook 05 served by Voila with smollm2-135m, driven in Chromium.

A prompt typed into the form gives the figure, the summary and the seconds; a subject that is
not in the prompt gives the clear message and no traceback. Skips without playwright, Chromium
or Voila unless DISSECT_REQUIRE_BOOK=1 (``make test``), which makes a missing piece a failure.
"""

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_book import CHROMIUM, CHROMIUM_FLAGS, _need

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "05_dissect_your_fact.ipynb"
STARTUP_S = float(os.environ.get("DISSECT_EXPLORE_TIMEOUT", 240))
"""The page runs notebook 05 (the model load and the running example) before it shows the form."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    for module in ("playwright", "voila", "ipywidgets"):
        _need(importlib.util.find_spec(module) is not None, f"{module} is not installed: pip install -e '.[book]'")
    _need(CHROMIUM.exists(), "Chromium is missing: apt-get install chromium (make test does it)")
    port = _free_port()
    env = {**os.environ, "DISSECT_EXPLORE_MODEL": "smollm2-135m", "PYTHONPATH": str(ROOT),
           "DISSECT_OUTPUT_ROOT": str(tmp_path_factory.mktemp("explore"))}
    log = open(tmp_path_factory.mktemp("voila-log") / "voila.log", "w+")
    server = subprocess.Popen([sys.executable, "-m", "voila", str(NOTEBOOK), f"--port={port}", "--no-browser",
                               "--Voila.ip=127.0.0.1", "--show_tracebacks=False"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"voila did not serve {url}: {log.read()[-3000:]}")
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture(scope="module")
def page(page_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(page_url, timeout=STARTUP_S * 1000)
        page.wait_for_selector("button:has-text('Dissect')", timeout=STARTUP_S * 1000)
        yield page
        browser.close()


def _fill(page, prompt, subject):
    inputs = page.locator(".widget-text input")
    inputs.nth(0).fill(prompt)
    inputs.nth(1).fill(subject)
    inputs.nth(2).fill("")
    page.click("button:has-text('Dissect')")


def test_a_typed_prompt_gives_figure_summary_and_seconds(page):
    _fill(page, "The Eiffel Tower is located in the city of", "Eiffel Tower")
    page.wait_for_selector(".dissect-seconds", timeout=STARTUP_S * 1000)
    assert "dissected in" in page.inner_text(".dissect-seconds")
    assert page.locator(".widget-output img").count() >= 1  # the figure
    text = page.inner_text(".widget-output")
    assert "Step 1, flow" in text and "Step 3, extraction" in text and "Eiffel" in text


def test_a_subject_not_in_the_prompt_gives_the_message_and_no_traceback(page):
    _fill(page, "The Eiffel Tower is located in the city of", "Big Ben")
    page.wait_for_selector(".dissect-error", timeout=60_000)
    message = page.inner_text(".dissect-error")
    assert "'Big Ben' is not in the prompt" in message and "looked for" in message
    assert "Traceback" not in page.inner_text("body")
