"""The catalog page: every model, filtered by family, size (billions), MoE and release month, linked to a plan."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.catalog import catalog_ids


def test_the_page_lists_every_model_with_family_release_and_a_plan_link(client: TestClient) -> None:
    page = client.get("/models").text
    assert f'<p id="count">{len(catalog_ids())} models</p>' in page
    assert "<td>Qwen3</td><td>2025-04</td>" in page
    assert 'href="/plan?model=openai/gpt-oss-20b"' in page
    assert 'href="/models"' in client.get("/").text  # the nav links to it


def test_filters_narrow_the_list(client: TestClient) -> None:
    response = client.get("/models", params={"family": "Qwen3", "min_b": "10", "moe": "false", "sort": "params"})
    assert response.status_code == 200
    rows = response.context["rows"]  # type: ignore[attr-defined]
    assert [r.id for r in rows] == ["Qwen/Qwen3-14B", "Qwen/Qwen3-32B"]
    assert 'value="Qwen3" selected' in response.text


def test_bad_filters_are_an_html_422_naming_the_field(client: TestClient) -> None:
    bad = client.get("/models", params={"released_from": "2025"})
    assert bad.status_code == 422 and "released_from" in bad.text
    assert client.get("/models", params={"min_b": "many"}).status_code == 422
