"""Headless Chromium for the browser tests (a helper module, not a test file): Debian's /usr/bin/chromium driven by
Playwright from PyPI, with no browser download (DESIGN.md, platform notes).

    from browser import browser, page   # fixtures, imported into a test module

    def test_something(page):
        with serve_folder(folder) as url:
            page.goto(url)

`launch_chromium(playwright)` is the one place the browser's flags live (benchmarks/web_page.py uses it too). Where
Playwright and Chromium are both missing the tests skip, except in CI (the CI variable set), where a browser test
that cannot run fails, as it does where only one of the two is here: a half set-up machine is a mistake to show.
.ci/run installs Chromium from apt; Playwright comes with the [dev] extra.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",                           # the tests run as root, where Chromium's sandbox will not start
    "--disable-background-networking",        # without these three Chromium keeps calling hosts this network refuses
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",                # containers' small /dev/shm crashes renderers that share big buffers
    "--disable-background-timer-throttling",  # a headless page is a background page: keep its timers and frames
    "--disable-renderer-backgrounding",       # at full rate (the page's frame loop, its workers' WASM threads)
    "--disable-backgrounding-occluded-windows",
)
TIMEOUT_MS = 60_000     # the default wait of a page's actions (loading 15 MB of WASM on a busy 2-core machine)
FAVICON = "/favicon.ico"
INSTALL = "apt-get install chromium; pip install playwright (the [dev] extra)"


def require_browser() -> None:
    """Return where Playwright and /usr/bin/chromium are both here; skip where neither is and CI is unset; else fail,
    naming what is missing."""
    missing = [what for what, here in (("the playwright package", importlib.util.find_spec("playwright") is not None),
                                       (str(CHROMIUM), CHROMIUM.exists())) if not here]
    if not missing:
        return
    message = f"browser test: {' and '.join(missing)} missing ({INSTALL})"
    if len(missing) == 2 and not os.environ.get("CI"):
        pytest.skip(message)
    pytest.fail(message + ("; CI must run the browser tests" if os.environ.get("CI") else ""), pytrace=False)


def launch_chromium(playwright, **options):
    """Debian's Chromium, headless, with CHROMIUM_ARGS; `options` go to playwright's chromium.launch."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS),
                                      **options)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """One headless Chromium for a test module."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = launch_chromium(pw)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser) -> Iterator:
    """A fresh page in its own context (no cache, storage or service worker shared between tests). The page's
    uncaught errors and console errors are collected in `page.errors`, so a test can assert there were none (the
    browser's own request for /favicon.ico, answered 404 where a page has no icon, is not the page's error)."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    tab.errors = []
    tab.on("pageerror", lambda e: tab.errors.append(f"uncaught: {e}"))
    tab.on("console", lambda m: tab.errors.append(f"console.error: {m.text}") if m.type == "error" and not
           (m.location or {}).get("url", "").endswith(FAVICON) else None)
    try:
        yield tab
    finally:
        context.close()
