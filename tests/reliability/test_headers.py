"""Issue 12, "headers": no Host header reflected, trusted hosts, nosniff, Referrer-Policy and a CSP the pages keep."""

from __future__ import annotations

from collections.abc import Callable
from html.parser import HTMLParser

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.http.headers import DOCS_POLICY, PAGE_POLICY
from tests.webapp import assert_problem

PLAN = "/plan?model=meta-llama/Llama-2-7b-hf"
PAGES = ["/", PLAN, "/calibrations", "/no-such-page", "/plan?model=nope/nope"]


def test_a_foreign_host_is_refused_without_echoing_it(client: TestClient) -> None:
    response = client.get(PLAN, headers={"Host": "evil.example:80"})
    body = assert_problem(response, 400, "untrusted-host")
    assert "evil.example" not in response.text and "GPUPLAN_TRUSTED_HOSTS" in body["detail"]
    assert response.headers["x-content-type-options"] == "nosniff"


def test_default_trusted_hosts_are_loopback() -> None:
    from app.settings import Settings

    assert Settings().trusted_hosts == ["localhost", "127.0.0.1", "[::1]"]


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000"])
def test_loopback_hosts_are_answered_by_default(make_app: Callable[..., FastAPI], host: str) -> None:
    from app.settings import Settings

    with TestClient(make_app(trusted_hosts=Settings().trusted_hosts)) as client:
        assert client.get("/healthz", headers={"Host": host}).status_code == 200


def test_with_any_host_allowed_the_page_still_never_reflects_it(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(trusted_hosts=["*"])) as client:
        for path in PAGES:
            page = client.get(path, headers={"Host": "evil.example:80"})
            assert page.status_code in (200, 404), path
            assert "evil.example" not in page.text, path


def test_the_embed_snippet_uses_the_public_url_when_set(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(public_url="https://gpuplan.example.com/")) as client:
        embed = client.get(PLAN).context["embed"]  # type: ignore[attr-defined]
    assert embed.startswith('<img src="https://gpuplan.example.com/api/v1/estimate?model=')


@pytest.mark.parametrize("path", [*PAGES, "/api/v1/estimate?model=meta-llama/Llama-2-7b-hf", "/healthz", "/nope"])
def test_every_answer_carries_the_security_headers(client: TestClient, path: str) -> None:
    headers = client.get(path).headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["x-frame-options"] == "DENY"
    assert headers["content-security-policy"] == PAGE_POLICY


def test_docs_get_their_own_policy(client: TestClient) -> None:
    assert client.get("/docs").headers["content-security-policy"] == DOCS_POLICY


def test_a_413_and_a_405_carry_them_too(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(max_body_bytes=2048)) as client:
        big = client.post("/api/v1/estimate", content=b"x" * 4096, headers={"content-type": "application/json"})
        assert big.status_code == 413 and big.headers["x-content-type-options"] == "nosniff"
        assert client.delete("/healthz").headers["content-security-policy"] == PAGE_POLICY


class _Audit(HTMLParser):
    """What the page policy forbids: script, inline <style>, event handlers, other origins, inline JS URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[str] = []
        self.style_attributes = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "iframe", "object", "embed", "base"):
            self.violations.append(f"<{tag}>")
        for name, value in attrs:
            text = (value or "").strip().lower()
            if name.startswith("on"):
                self.violations.append(f"{tag} {name}=")
            if name == "style":
                self.style_attributes += 1  # allowed: style-src-attr 'unsafe-inline'
            if name in ("href", "src", "action", "formaction") and (
                text.startswith(("http:", "https:", "//", "javascript:")) or (text.startswith("data:") and tag != "img")
            ):
                self.violations.append(f"{tag} {name}={value}")
            if tag == "link" and name == "href" and not text.startswith("/static/"):
                self.violations.append(f"link to {value}")


@pytest.mark.parametrize("path", PAGES)
def test_the_pages_satisfy_their_policy(client: TestClient, path: str) -> None:
    audit = _Audit()
    audit.feed(client.get(path).text)
    assert audit.violations == []


def test_the_result_page_needs_style_attributes_and_the_policy_allows_exactly_those(client: TestClient) -> None:
    audit = _Audit()
    audit.feed(client.get(PLAN).text)
    assert audit.style_attributes > 0
    directives = dict(part.strip().split(" ", 1) for part in PAGE_POLICY.split(";"))
    assert directives["style-src-attr"] == "'unsafe-inline'" and directives["style-src"] == "'self'"
    assert directives["default-src"] == "'none'" and "script-src" not in directives
