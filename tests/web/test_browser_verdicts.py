"""The result page in a real browser: each verdict state in its own colour and words, the band, a phone layout."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from playwright.sync_api import Page

from tests.web.test_browser import ARTIFACTS, base_url, browser, page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

MIXTRAL = "mistralai/Mixtral-8x7B-v0.1"
# Colours of the three states (static/style.css: --ok, --tight, --bad), as the browser computes them.
STATE_COLOURS = {"fits": "rgb(8, 127, 91)", "tight": "rgb(161, 92, 0)", "does_not_fit": "rgb(179, 38, 30)"}
PLANS = {
    "fits": {"model": "meta-llama/Llama-3.1-8B"},
    # 180 GiB on one GPU: only MI300X's 192 GiB holds it, inside its 10 % reserve
    "tight": {"model": MIXTRAL, "method": "lora", "seq_len": "110000"},
    # 457 GiB of full fine-tuning: no single GPU, several MI300X with layers split
    "does_not_fit": {"model": MIXTRAL, "method": "full"},
}


def _open(p: Page, base: str, plan: dict[str, str], width: int) -> None:
    p.set_viewport_size({"width": width, "height": 900})
    p.goto(f"{base}/plan?{urlencode(plan)}")


def _label_colour(p: Page) -> str:
    colour: str = p.eval_on_selector("#verdict-label", "e => getComputedStyle(e).backgroundColor")
    return colour


def test_each_verdict_state_has_its_own_colour_and_words(page: Page, base_url: str) -> None:  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    seen = {}
    for state, plan in PLANS.items():
        _open(page, base_url, plan, 1280)
        assert page.get_attribute("#verdict", "data-state") == state
        seen[state] = _label_colour(page)
        text = page.text_content("#verdict") or ""
        if state == "fits":
            assert "Fits with headroom" in text and "Fits on 1 ×" in text
        elif state == "tight":
            assert "Fits, but tight" in text and "only inside the 10% headroom reserve" in text
            page.screenshot(path=str(ARTIFACTS / "result-tight-1280.png"), full_page=True)
        else:
            assert "Does not fit" in text and "needs" in text and "×" in text
            page.screenshot(path=str(ARTIFACTS / "result-nofit-1280.png"), full_page=True)
    assert seen == STATE_COLOURS  # the intended colours, and three different ones
    assert len(set(seen.values())) == 3


def test_result_page_at_1280_and_on_a_phone(page: Page, base_url: str) -> None:  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    _open(page, base_url, PLANS["fits"], 1280)
    band = page.text_content("#band") or ""
    assert "Likely" in band and "comparable verified runs" in band and "CPU reference tracker" in band
    assert page.is_visible("#cuda-caveat")  # the shipped runs are CPU runs: said next to the headline
    assert page.is_visible("#chart .chart-wide svg") and not page.is_visible("#chart .chart-narrow svg")
    page.screenshot(path=str(ARTIFACTS / "result-1280.png"), full_page=True)

    _open(page, base_url, PLANS["fits"], 390)
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= 390, f"the page scrolls sideways: {overflow} px wide"
    table = page.locator("#breakdown").bounding_box()
    assert table is not None and table["x"] + table["width"] <= 390
    assert page.is_visible("#chart .chart-narrow svg") and not page.is_visible("#chart .chart-wide svg")
    chart = page.locator("#chart .chart-narrow svg").bounding_box()
    assert chart is not None and 330 <= chart["width"] <= 390  # drawn near 1:1, so its 11-15 px text stays readable
    size = page.eval_on_selector("#chart .chart-narrow svg text.legend", "e => e.getBoundingClientRect().height")
    assert size >= 10
    page.screenshot(path=str(ARTIFACTS / "result-390.png"), full_page=True)
    _open(page, base_url, PLANS["does_not_fit"], 390)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "result-nofit-390.png"), full_page=True)
