"""A newcomer's first hour in a real browser: /docs with the network cut, the calibrations page at two widths."""

from __future__ import annotations

from playwright.sync_api import Browser, Page, Route

from tests.web.test_browser import ARTIFACTS, STORED, base_url, browser, page

__all__ = ["base_url", "browser", "page"]


def _loopback_only(p: Page) -> list[str]:
    """Abort every request that leaves 127.0.0.1; returns the list of URLs that were blocked."""
    blocked: list[str] = []

    def handle(route: Route) -> None:
        url = route.request.url
        if url.startswith("http://127.0.0.1:") or url.startswith("data:") or url.startswith("blob:"):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    p.route("**/*", handle)
    return blocked


def test_docs_render_an_operation_with_the_network_blocked(page: Page, base_url: str) -> None:
    blocked = _loopback_only(page)
    missing: list[str] = []
    page.on("response", lambda r: missing.append(r.url) if r.status >= 400 else None)
    page.goto(base_url + "/docs")
    operation = page.locator(".opblock-summary-path", has_text="/api/v1/estimate").first
    operation.wait_for(state="visible")
    assert operation.is_visible()
    assert blocked == [] and missing == []


def test_calibrations_page_filters_sorts_pages_at_two_widths(browser: Browser, base_url: str) -> None:
    for width in (1280, 390):
        context = browser.new_context(viewport={"width": width, "height": 900})
        p = context.new_page()
        p.set_default_timeout(15_000)
        p.goto(base_url + "/calibrations")
        rows = p.locator("#measurements tbody tr")
        assert rows.count() == 50
        assert p.locator("#scatter svg circle.point").count() == STORED[0]  # the chart plots every match
        assert f"of {STORED[0]:,}" in (p.text_content("#pager") or "")
        legend = p.locator("#scatter svg text").all_text_contents()
        assert not any(t.startswith("cuda") for t in legend)  # no GPU runs stored: no cuda legend entry
        assert "measured peak (GiB)" in legend
        height = p.evaluate("document.documentElement.scrollHeight")
        assert height < 9000, height
        p.screenshot(path=str(ARTIFACTS / f"calibrations-{width}.png"), full_page=True)
        p.select_option("select[name=family]", "qwen2")
        p.select_option("select[name=sort]", "-abs_error")
        p.click("form.filters button[type=submit]")
        p.wait_for_url("**/calibrations?*family=qwen2*")
        families = p.locator("#measurements tbody tr td:nth-child(2)").all_text_contents()
        assert families and set(families) == {"qwen2"}
        errors = [
            abs(float(t.split()[0])) for t in p.locator("#measurements tbody td:nth-child(11)").all_text_contents()
        ]
        assert errors == sorted(errors, reverse=True)
        context.close()


def test_a_pasted_config_json_answers_with_the_network_blocked(page: Page, base_url: str) -> None:
    import json

    from tests.webapp import TINY_LLAMA

    blocked = _loopback_only(page)
    page.goto(base_url + "/")
    page.click("#model-config summary")
    page.fill("#config_json", json.dumps(TINY_LLAMA))
    page.click("#model-config button[type=submit]")
    page.wait_for_url("**/plan?model=config%3A*")
    assert page.locator("h1").first.is_visible()
    assert "config:" in (page.input_value("form.planner input[name=model]") or "")
    # the browser's own min stops seq_len 0 (the form is folded on the result page: set it by script)
    underflow = "(() => { const i = document.querySelector('form.planner input[name=seq_len]'); i.value = '0'; "
    underflow += "return i.validity.rangeUnderflow; })()"
    assert page.evaluate(underflow) is True
    # and when a URL sends it anyway, the server's error is marked at each field
    page.goto(page.url + "&seq_len=0&rank=0")
    assert page.locator(".field.invalid").count() == 2
    assert "2 problems" in (page.text_content(".problem .detail") or "")
    page.screenshot(path=str(ARTIFACTS / "planner-error-at-fields.png"), full_page=False)
    assert blocked == []
