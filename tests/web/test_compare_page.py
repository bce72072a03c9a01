"""The comparison page in-process: the permalink renders, the add-a-plan form redirects to the next permalink."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

from fastapi.testclient import TestClient

from app.compare.entries import parse_entries
from tests.compare.helpers import MODEL, PLANS


def _plans(location: str) -> list[str]:
    return [v for k, v in parse_qsl(urlsplit(location).query) if k == "plan"]


def test_the_permalink_shows_every_plan_on_one_chart(client: TestClient) -> None:
    page = client.get("/compare", params=[("plan", p) for p in PLANS])
    assert page.status_code == 200, page.text
    assert page.template.name == "compare.html"  # type: ignore[attr-defined]
    assert page.text.count('<article class="plan-card') == 3
    assert page.text.count('<g class="plan"') == 3
    assert len(re.findall(r'<th class="num">plan \d</th>', page.text)) == 3
    links = page.context["exports"]  # type: ignore[attr-defined]
    assert [label for label, _ in links] == ["Markdown", "SVG", "JSON", "PDF"]
    entries = parse_entries(PLANS)
    assert _plans(page.context["permalink"]) == [e.query() for e in entries]  # type: ignore[attr-defined]


def test_add_changes_one_field_of_a_plan_and_redirects_to_the_permalink(client: TestClient) -> None:
    start = [("plan", f"model={MODEL}"), ("from", "1"), ("change", "method"), ("to", "lora")]
    added = client.get("/compare", params=start, follow_redirects=False)
    assert added.status_code == 303
    assert _plans(added.headers["location"]) == [f"model={MODEL}", f"model={MODEL}&method=lora"]
    more = [("changes", "method=full gpus=8 sharding=zero3 optimizer=adamw gpu=H100 80GB")]
    params = [("plan", p) for p in _plans(added.headers["location"])] + [("from", "2"), *more]
    third = client.get("/compare", params=params, follow_redirects=False)
    assert _plans(third.headers["location"])[2] == (
        f"model={MODEL}&gpu=H100+80GB&method=full&optimizer=adamw&gpus=8&sharding=zero3"
    )
    params = [("plan", p) for p in _plans(third.headers["location"])]
    replaced = client.get(
        "/compare",
        params=[*params, ("from", "1"), ("change", "gpu"), ("to", "RTX 4090"), ("mode", "replace")],
        follow_redirects=False,
    )
    assert _plans(replaced.headers["location"])[0] == f"model={MODEL}&gpu=RTX+4090"
    assert len(_plans(replaced.headers["location"])) == 3


def test_a_bad_change_names_the_plan_it_would_make(client: TestClient) -> None:
    params = [("plan", PLANS[0]), ("plan", PLANS[1]), ("from", "2"), ("change", "rank"), ("to", "0")]
    page = client.get("/compare", params=params)
    assert page.status_code == 422
    assert '<p class="detail">3rd plan: rank: Input should be greater than or equal to 1</p>' in page.text


def test_seven_plans_or_none_are_refused(client: TestClient) -> None:
    assert "got 7" in client.get("/compare", params=[("plan", PLANS[0])] * 7).text
    assert client.get("/compare").status_code == 422


def test_the_result_page_links_its_plan_into_a_comparison(client: TestClient) -> None:
    page = client.get("/plan", params={"model": MODEL, "method": "lora", "rank": "32"})
    assert page.status_code == 200
    form = re.search(r'<form id="add-to-compare".*?</form>', page.text, re.S)
    assert form is not None
    hidden = re.search(r'name="plan" value="([^"]+)"', form.group(0))
    assert hidden is not None
    value = hidden.group(1).replace("&amp;", "&")
    assert parse_entries([value, value])[0].plan.rank == 32
    assert 'name="change"' in form.group(0) and 'name="to"' in form.group(0)
    assert "format=pdf" in page.text  # the result page's PDF export
