"""A real browser (Debian's chromium through Playwright) fills the Serve form, submits it without JavaScript and
reads the result page; the screenshot lands in artifacts/serve-result.png."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page

from tests.browser import ARTIFACTS, chromium, served, skip_without_chromium
from tests.webapp import build_app

pytestmark = pytest.mark.browser

skip_without_chromium()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app (no store) under uvicorn in a thread on a free loopback port."""
    with served(build_app(tmp_path_factory.mktemp("serve-browser"))) as url:
        yield url


@pytest.fixture
def page(base_url: str) -> Iterator[Page]:
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1200, "height": 900}, java_script_enabled=False)
        page = context.new_page()
        page.set_default_timeout(15_000)
        yield page


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


def test_from_the_training_result_through_serve_to_the_procurement_report(page: Page, base_url: str) -> None:
    """Training result -> "Serve this model" (the plan comes along) -> the report; its print layout is screenshot
    to artifacts/procurement-report.png (A4 width at 96 dpi, as the print stylesheet lays it out)."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(base_url + "/plan?model=meta-llama/Llama-3.1-8B&method=qlora&rank=32")
    page.click("#serve-link")
    page.wait_for_url(re.compile(r".*/serve\?.*train=.*"))
    page.fill("#context", "8192")
    page.fill("#concurrency", "16")
    page.click("form.planner button[type=submit]")
    page.wait_for_url(re.compile(r".*/serve\?train=.*context=8192.*"))
    page.click("#report-link")
    page.wait_for_url(re.compile(r".*/report\?train=.*&serve=.*"))
    assert page.locator("#train-half").count() == 1 and page.locator("#serve-half").count() == 1
    line = page.inner_text("#purchase-line")
    assert line.startswith("training on 1 x") and "serving on" in line and "GPUs in all" in line
    assert page.locator("#train-terms tr[data-term=lora_adapter_bytes]").count() == 1
    assert page.locator("#serve-tiers tbody tr").count() >= 20
    page.set_viewport_size({"width": 794, "height": 1123})
    page.emulate_media(media="print")
    assert page.locator("#report-links").is_hidden()  # the print layout drops the links
    page.screenshot(path=str(ARTIFACTS / "procurement-report.png"), full_page=True)
