"""A real browser (Debian's chromium through Playwright) drives the planner served by uvicorn on loopback."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser, Page

from app.core.plan import TrainingPlan
from app.store import Store
from app.store.seed import seed_store
from tests.browser import ARTIFACTS, chromium, served, skip_without_chromium
from tests.webapp import build_app, make_record

STORED: list[int] = []  # how many runs the browser's store holds

pytestmark = pytest.mark.browser

PAYLOAD = '"\'><script>window.__xss=1;alert(1)</script><img src=x onerror="window.__xss=2;alert(2)">\'"'

skip_without_chromium()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app under uvicorn in a thread, with an in-memory store holding runs (one with hostile text)."""
    folder = tmp_path_factory.mktemp("browser")
    store = Store.open(f"sqlite:///{folder / 'store.sqlite3'}")
    seed_store(store)  # the measured CPU matrix gpuplan ships, as a fresh `gpuplan serve` has it
    store.add_measurement(
        make_record(
            model_id=PAYLOAD[:200], device="cpu", device_name=PAYLOAD[:200], env={"torch": PAYLOAD}, source="xss-test"
        )
    )
    STORED.append(len(store.list_measurements(limit=10_000)))
    app = build_app(folder, store=store)
    try:
        with served(app) as url:
            yield url
    finally:
        store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        context.close()


def test_fill_submit_follow_permalink_and_print(page: Page, base_url: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    p = page
    refused: list[str] = []  # the Content-Security-Policy must never have to block anything the pages use
    p.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    p.goto(base_url + "/")
    assert p.locator("form.planner").count() == 1
    assert p.input_value("#rank") == "16" and p.input_value("#seq_len") == "2048"
    options = p.locator("#catalog-models option").count()
    assert options >= 20
    p.screenshot(path=str(ARTIFACTS / "planner-form.png"), full_page=True)

    p.fill("#model", "meta-llama/Llama-3.1-8B")
    p.select_option("#method", "lora")
    p.fill("#rank", "32")
    p.fill("#seq_len", "4096")
    p.fill("#targets", "q_proj,k_proj,v_proj,o_proj")
    p.select_option("#optimizer", "adamw_8bit")
    p.click("form.planner button[type=submit]")
    p.wait_for_url(re.compile(r".*/plan\?.*"))
    assert "model=meta-llama%2FLlama-3.1-8B" in p.url and "method=lora" in p.url

    total = p.text_content("#total")
    assert total and total.endswith("GiB")
    assert "Fits on" in (p.text_content("#verdict") or "")
    segments = p.locator("#chart .chart-wide svg rect.segment").count()
    rows = p.locator("#breakdown tbody tr").count()
    assert segments >= 8 and rows >= segments
    assert p.locator("#tiers tbody tr").count() == 21
    assert p.locator("#fit tbody tr").count() == 3
    assert p.locator("#chart .chart-wide svg").bounding_box()["width"] > 500
    embed = p.input_value("#embed-snippet")
    # relative: the page never reflects the Host header (GPUPLAN_PUBLIC_URL makes it absolute)
    assert embed.startswith('<img src="/api/v1/estimate?') and "format=svg" in embed

    p.click("#permalink")
    p.wait_for_load_state()
    assert "rank=32" in p.url and "seq_len=4096" in p.url
    assert p.text_content("#total") == total
    assert p.input_value("#rank") == "32"  # the "change the plan" form is prefilled
    p.screenshot(path=str(ARTIFACTS / "planner-result.png"), full_page=True)

    svg = p.request.get(base_url + "/api/v1/estimate?" + p.url.split("?", 1)[1] + "&format=svg")
    assert svg.ok and svg.headers["content-type"] == "image/svg+xml"

    p.emulate_media(media="print")
    assert not p.is_visible("form.planner") and not p.is_visible("header.site")
    p.screenshot(path=str(ARTIFACTS / "planner-result-print.png"), full_page=True)
    assert refused == []
    pdf = p.pdf(format="A4")
    (ARTIFACTS / "planner-result.pdf").write_bytes(pdf)
    assert len(re.findall(rb"/Type\s*/Page[^s]", pdf)) == 1, "the printed report is one page"


def _assert_inert(p: Page, dialogs: list[str]) -> None:
    assert p.evaluate("window.__xss") is None
    assert dialogs == []
    assert p.locator("script").count() == 0
    assert p.locator("img[src=x]").count() == 0


def test_hostile_text_in_every_field_is_escaped_and_inert(page: Page, base_url: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    p = page
    dialogs: list[str] = []
    p.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    p.goto(base_url + "/")
    text_inputs = p.locator("input[type=text]")
    assert text_inputs.count() == 2  # model and targets
    for i in range(text_inputs.count()):
        text_inputs.nth(i).fill(PAYLOAD)
    p.click("form.planner button[type=submit]")
    p.wait_for_url(re.compile(r".*/plan\?.*"))
    _assert_inert(p, dialogs)
    p.screenshot(path=str(ARTIFACTS / "planner-error-xss.png"), full_page=True)
    assert p.text_content("h1") in ("Invalid model id", "Invalid input")
    assert "<script>window.__xss=1;alert(1)</script>" in (p.text_content(".problem") or "")  # shown as text
    assert p.input_value("#model") == PAYLOAD and p.input_value("#targets") == PAYLOAD

    # every plan field (numbers and choices too) through the URL, which a browser form cannot constrain
    everything = {name: PAYLOAD for name in ("model", *TrainingPlan.model_fields)}
    p.goto(base_url + "/plan?" + urlencode(everything))
    _assert_inert(p, dialogs)
    assert p.locator("ul.field-errors li").count() >= len(TrainingPlan.model_fields)
    assert p.input_value("#model") == PAYLOAD and p.input_value("#targets") == PAYLOAD

    p.goto(base_url + "/calibrations")
    _assert_inert(p, dialogs)
    assert p.locator("#scatter svg circle.point").count() == STORED[0]
    p.goto(base_url + "/calibrations?source=xss-test")  # the table is paged: the hostile row alone
    _assert_inert(p, dialogs)
    assert PAYLOAD[:200] in (p.text_content("#measurements") or "")
    p.screenshot(path=str(ARTIFACTS / "planner-calibrations.png"), full_page=True)

    p.goto(base_url + "/" + PAYLOAD)
    _assert_inert(p, dialogs)
