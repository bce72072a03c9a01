"""/docs needs no other origin: its assets and the favicon come from this server."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_docs_page_loads_its_assets_from_this_server(client: TestClient) -> None:
    html = client.get("/docs").text
    assert "cdn." not in html and "https://" not in html.split("<script>")[0]
    for asset in ("/static-docs/swagger-ui-bundle.js", "/static-docs/swagger-ui.css", "/static/favicon.svg"):
        assert asset in html
        assert client.get(asset).status_code == 200


def test_favicon_answers(client: TestClient) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert 'rel="icon"' in client.get("/").text
