"""Issue 12, "correctness under bad input": every reproduction answers 4xx problem+json, never 500."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.store import Store
from tests.webapp import assert_problem, make_record

from .conftest import AUTH

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def upload_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = make_record().model_dump(mode="json", exclude={"error_pct", "id"})
    body.update(overrides)
    return body


def post_raw(client: TestClient, text: str) -> Any:
    return client.post(
        "/api/v1/calibrations", content=text.encode(), headers={**AUTH, "content-type": "application/json"}
    )


def with_raw(field: str, raw: str) -> str:
    """An upload body whose `field` is the raw JSON text `raw` (NaN, Infinity, escapes json.dumps cannot write)."""
    body = upload_body(**{field: "__RAW__"})
    return json.dumps(body).replace('"__RAW__"', raw)


BAD_UPLOADS = {
    "int64 overflow": json.dumps(upload_body(measured_peak_bytes=2**63)),
    "int64 overflow, estimate": json.dumps(upload_body(estimated_peak_bytes=2**64)),
    "date before year 1 in UTC": json.dumps(upload_body(created_at="0001-01-01T00:00:00+14:00")),
    "date after year 9999 in UTC": json.dumps(upload_body(created_at="9999-12-31T23:59:59-14:00")),
    "date out of the sane range": json.dumps(upload_body(created_at="1970-01-01T00:00:00Z")),
    "NaN in plan": with_raw("plan", '{"method": "qlora", "alpha": NaN}'),
    "Infinity in config": with_raw("config", '{"model_type": "llama", "hidden_size": Infinity}'),
    "-Infinity in env": with_raw("env", '{"torch": -Infinity}'),
    "NaN in phases": with_raw("phases", '[{"label": "load", "current_bytes": NaN, "peak_bytes": 1}]'),
    "NaN deep in config": with_raw("config", '{"a": {"b": [1, {"c": NaN}]}}'),
    "lone surrogate key": with_raw("config", '{"\\udc00": 1}'),
    "lone surrogate value": with_raw("env", '{"torch": "\\ud800"}'),
    "lone surrogate in model_id": with_raw("model_id", '"x\\udfff"'),
    "false as an integer": json.dumps(upload_body(measured_peak_bytes=False)),
    "1.0 as an integer": json.dumps(upload_body(measured_peak_bytes=1.0)),
    "true as layers": json.dumps(upload_body(layers=True)),
    "nested 100 deep": with_raw("config", '{"a": ' * 100 + "1" + "}" * 100),
    "too many phases": json.dumps(upload_body(phases=[{"label": "x", "current_bytes": 1, "peak_bytes": 1}] * 65)),
    "a string of 20,000 characters": json.dumps(upload_body(env={"torch": "x" * 20_000})),
    "verified on arrival": json.dumps(upload_body(verified=True)),
    "verified as 0": json.dumps(upload_body(verified=0)),
    "integer beyond int64 nested": with_raw("config", '{"n": 99999999999999999999999}'),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_upload_is_422_and_stores_nothing(client: TestClient, sqlite_store: Store, case: str) -> None:
    before = len(sqlite_store.list_measurements(limit=10_000))
    body = assert_problem(post_raw(client, BAD_UPLOADS[case]), 422)
    assert body["errors"] and all(e["field"] for e in body["errors"])
    assert len(sqlite_store.list_measurements(limit=10_000)) == before
    assert client.get("/api/v1/calibrations").status_code == 200  # nothing poisoned the store


def test_a_good_upload_is_still_201(client: TestClient) -> None:
    response = client.post("/api/v1/calibrations", json=upload_body(), headers=AUTH)
    assert response.status_code == 201, response.text


def test_an_unknown_key_with_a_lone_surrogate_is_422_not_500(client: TestClient) -> None:
    text = '{"model": "meta-llama/Llama-2-7b-hf", "\\udc00": 1}'
    response = client.post("/api/v1/estimate", content=text.encode(), headers={"content-type": "application/json"})
    assert_problem(response, 422)  # pydantic refuses the key; no answer ever echoes a lone surrogate unescaped


@pytest.mark.parametrize("targets", [["q_proj", 5], [5], ["q_proj", None], ["q_proj", True], [["q_proj"]]])
def test_estimate_targets_must_be_strings(client: TestClient, targets: list[Any]) -> None:
    response = client.post("/api/v1/estimate", json={"model": "meta-llama/Llama-2-7b-hf", "targets": targets})
    body = assert_problem(response, 422)
    assert [e["field"] for e in body["errors"]] == ["targets"]


def test_estimate_targets_as_strings_still_work(client: TestClient) -> None:
    ok = client.post("/api/v1/estimate", json={"model": "meta-llama/Llama-2-7b-hf", "targets": ["q_proj", "v_proj"]})
    assert ok.status_code == 200 and ok.json()["plan"]["targets"] == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    ("path", "text", "where"),
    [
        ("/api/v1/estimate", '{"model": "x",', "Expecting property name enclosed in double quotes at line 1 column 15"),
        ("/api/v1/estimate", "{\n  9\n}", "Expecting property name enclosed in double quotes at line 2 column 3"),
        ("/api/v1/calibrations", "[1, 2", "Expecting ',' delimiter at line 1 column 6"),
        ("/api/v1/estimate/from-config", "{nope", "key must be a string at line 1 column 2"),
    ],
)
def test_invalid_json_is_400_saying_what_and_where(client: TestClient, path: str, text: str, where: str) -> None:
    headers = {**AUTH, "content-type": "application/json"}
    body = assert_problem(client.post(path, content=text.encode(), headers=headers), 400, "invalid-json")
    assert body["detail"].startswith(f"the body is not valid JSON: {where}")
    assert body["errors"] == [{"field": "body", "message": body["detail"]}]


def test_readme_says_400_for_invalid_json() -> None:
    assert "invalid JSON answers\n  **400** (`invalid-json`" in README


@pytest.mark.parametrize("path", ["/healthz", "/", "/readyz", "/plan?model=meta-llama/Llama-2-7b-hf"])
def test_head_answers_200_without_a_body(client: TestClient, path: str) -> None:
    response = client.head(path)
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-length"] == str(len(client.get(path).content))


def test_field_errors_escape_lone_surrogates() -> None:
    from app.http.problems import field_errors

    (error,) = field_errors([{"loc": ("body", "\udc00"), "msg": "bad \ud800"}])
    assert (error.field, error.message) == ("\\udc00", "bad \\ud800")
    error.model_dump_json().encode()  # encodes
