"""A real browser builds the issue's comparison from a result page, downloads its PDF, and screenshots it."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page
from pypdf import PdfReader

from tests.browser import ARTIFACTS, chromium, served, skip_without_chromium
from tests.compare.helpers import MODEL, headline_texts, needs_pdf
from tests.webapp import build_app

pytestmark = pytest.mark.browser

skip_without_chromium()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app (no store: the comparison needs none) under uvicorn on a free loopback port."""
    with served(build_app(tmp_path_factory.mktemp("compare-browser"))) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()


def _change(p: Page, start: int, field: str, value: str, mode: str = "add", more: str = "") -> None:
    """The comparison page's form: start from plan `start`, change one field (and `more` words)."""
    p.select_option("#from", str(start))
    p.select_option("#change", field)
    p.fill("#to", value)
    p.fill("#changes", more)
    p.select_option("#mode", mode)
    p.click("form.add-plan button[type=submit]")
    p.wait_for_load_state()


def _build_the_comparison(p: Page, base_url: str) -> None:
    """QLoRA on 1 x RTX 4090, LoRA on 1 x A100 80GB, full fine-tuning on 8 x H100 80GB with ZeRO-3."""
    p.goto(f"{base_url}/plan?model={MODEL}")
    p.select_option("#compare-change", "method")
    p.fill("#compare-to", "lora")
    p.click("#add-to-compare button[type=submit]")
    p.wait_for_url(re.compile(r".*/compare\?plan=.*"))
    assert p.locator("article.plan-card").count() == 2
    _change(p, 1, "gpu", "RTX 4090", mode="replace")
    _change(p, 2, "gpu", "A100 80GB", mode="replace")
    _change(p, 2, "method", "full", more="optimizer=adamw gpus=8 sharding=zero3 gpu=H100 80GB")


def test_three_plans_from_a_result_page_then_the_pdf(page: Page, base_url: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    p = page
    _build_the_comparison(p, base_url)
    cards = p.locator("article.plan-card")
    assert cards.count() == 3
    for i in range(3):
        text = cards.nth(i).text_content() or ""
        for fragment in headline_texts(i):
            assert fragment in text, (i, fragment, text)
    assert p.locator("#compare-chart svg g.plan").count() == 3
    assert "8 × H100 80GB" in (cards.nth(2).text_content() or "")

    shown = p.text_content("#plans")
    p.click("#permalink")
    p.wait_for_load_state()
    assert p.text_content("#plans") == shown  # the permalink holds the whole comparison
    p.screenshot(path=str(ARTIFACTS / "compare-1280.png"), full_page=True)

    p.set_viewport_size({"width": 390, "height": 844})
    p.reload()
    overflow = p.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a 390 px phone"
    assert p.locator("#compare-chart svg").bounding_box()["width"] <= 390  # type: ignore[index]
    p.screenshot(path=str(ARTIFACTS / "compare-390.png"), full_page=True)


@needs_pdf
def test_the_pdf_download_holds_the_headlines(page: Page, base_url: str) -> None:
    p = page
    _build_the_comparison(p, base_url)
    with p.expect_download() as download:
        p.click("a.export:text('PDF')")
    path = download.value.path()
    assert download.value.suggested_filename.startswith("gpuplan-compare-")
    reader = PdfReader(io.BytesIO(Path(path).read_bytes()))
    assert len(reader.pages) == 1
    text = reader.pages[0].extract_text()
    for i in range(3):
        for fragment in headline_texts(i):
            assert fragment in text, (i, fragment)
