"""The result page in a real browser quotes the time model against the stored measured step times."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.test_time_checks import LLAMA, RUNS
from tests.browser import ARTIFACTS, chromium, served, skip_without_chromium
from tests.webapp import FakeStore, build_app

pytestmark = pytest.mark.browser

skip_without_chromium()


def test_the_time_and_cost_section_shows_the_time_check(tmp_path: Path) -> None:
    app = build_app(tmp_path, store=FakeStore(list(RUNS)))
    with served(app) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"{url}/plan?model={LLAMA}")
        checks = page.locator("#time-checks li")
        texts = checks.all_inner_texts()
        section = page.locator("#options")
        section.scroll_into_view_if_needed()
        ARTIFACTS.mkdir(exist_ok=True)
        section.screenshot(path=str(ARTIFACTS / "time-checks.png"))
    assert texts[0].startswith("No measured step times yet for ")  # the recommended tier has none
    (h200,) = [t for t in texts if "on H200" in t]
    assert h200.startswith("Time model vs 3 measured runs on H200: median \u221220 %, \u221250 % to +10 %")
    assert "measured MFU 30% (model: 40%)" in h200 and "H200, same method, checkpointing" in h200
