"""A real browser (Debian's chromium through Playwright) fills the Serve form, submits it without JavaScript and
reads the result page; the screenshot lands in artifacts/serve-result.png."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, sync_playwright

from tests.webapp import build_app

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

if not CHROMIUM.exists():  # pragma: no cover - depends on the machine
    pytest.skip("Debian chromium is not installed (/usr/bin/chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app (no store) under uvicorn in a thread on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = build_app(tmp_path_factory.mktemp("serve-browser"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def page(base_url: str) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser: Browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        context = browser.new_context(viewport={"width": 1200, "height": 900}, java_script_enabled=False)
        page = context.new_page()
        page.set_default_timeout(15_000)
        try:
            yield page
        finally:
            browser.close()


def test_fill_the_serve_form_and_read_the_result(page: Page, base_url: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(base_url + "/serve")
    page.fill("#model", "google/gemma-2-9b")
    page.fill("#context", "8192")
    page.fill("#concurrency", "4")
    page.select_option("#kv_dtype", "fp8")
    page.fill("#gpu", "L40S")
    page.click("form.planner button[type=submit]")
    page.wait_for_url(re.compile(r".*/serve\?.*model=google%2Fgemma-2-9b.*"))
    assert page.locator("h1").first.inner_text() == "google/gemma-2-9b"
    assert page.locator("#breakdown tr[data-term=kv_cache_bytes]").count() == 1
    assert page.locator("#tiers tbody tr").count() >= 20 and page.locator("#stretch").count() == 1
    assert "Serves on" in page.inner_text("#verdict")
    page.screenshot(path=str(ARTIFACTS / "serve-result.png"), full_page=True)
    page.click("#permalink")
    assert page.locator("#breakdown").count() == 1
