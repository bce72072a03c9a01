"""A newcomer's first hour in a real browser: /docs with the network cut, the calibrations page at two widths."""

from __future__ import annotations

from playwright.sync_api import Page, Route

from tests.web.test_browser import ARTIFACTS, base_url, browser, page

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
