"""Every error path answers problem+json with the same shape: gpuplan errors, HTTP errors, validation, crashes, 413."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app import errors
from app.errors import GpuplanError
from app.http.problems import PROBLEM_BASE, field_errors, to_problem
from tests.webapp import assert_problem, build_app


def _all_errors(cls: type[GpuplanError] = GpuplanError) -> Iterator[type[GpuplanError]]:
    yield cls
    for sub in cls.__subclasses__():
        yield from _all_errors(sub)


ERROR_CLASSES = sorted({c for c in _all_errors() if c.__module__ == errors.__name__}, key=lambda c: c.__name__)


@pytest.fixture
def raising_app(tmp_path: Path) -> FastAPI:
    """The app plus routes that raise any error class on demand, under /api and under an HTML path."""
    app = build_app(tmp_path)
    by_name = {c.__name__: c for c in ERROR_CLASSES}

    def boom(name: str) -> None:
        if name == "crash":
            raise RuntimeError("secret internals /etc/passwd")
        raise by_name[name](f"{name} happened: fix it like this")

    app.add_api_route("/api/v1/test-raise/{name}", boom)
    app.add_api_route("/test-raise/{name}", boom)
    return app


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_gpuplan_error_maps_to_its_problem(raising_app: FastAPI, cls: type[GpuplanError]) -> None:
    with TestClient(raising_app) as client:
        response = client.get(f"/api/v1/test-raise/{cls.__name__}")
    body = assert_problem(response, cls.status, cls.slug)
    assert body == {
        "type": PROBLEM_BASE + cls.slug,
        "title": cls.title,
        "status": cls.status,
        "detail": f"{cls.__name__} happened: fix it like this",
        "errors": [],
    }


def test_the_same_error_on_an_html_route_renders_error_html(raising_app: FastAPI) -> None:
    with TestClient(raising_app) as client:
        response = client.get("/test-raise/ModelNotFound")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert response.template.name == "error.html"  # type: ignore[attr-defined]
    problem = response.context["problem"]  # type: ignore[attr-defined]
    assert (problem.title, problem.status, problem.detail) == (
        "Model not found",
        404,
        "ModelNotFound happened: fix it like this",
    )


def test_unexpected_exception_is_a_500_problem_without_internals(raising_app: FastAPI) -> None:
    with TestClient(raising_app, raise_server_exceptions=False) as client:
        response = client.get("/api/v1/test-raise/crash")
        page = client.get("/test-raise/crash")
    body = assert_problem(response, 500, "internal-error")
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert body["title"] == "Internal Server Error"
    assert page.status_code == 500 and "secret" not in page.text and "Internal Server Error" in page.text


def test_unknown_api_path_is_404_problem_and_unknown_page_is_404_html(client: TestClient) -> None:
    assert_problem(client.get("/api/v1/nope"), 404, "not-found")
    page = client.get("/nope")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert page.template.name == "error.html"  # type: ignore[attr-defined]


def test_wrong_method_is_405_problem_with_allow(client: TestClient) -> None:
    response = client.delete("/api/v1/estimate")
    assert_problem(response, 405, "method-not-allowed")
    assert "allow" in response.headers


def test_validation_errors_name_each_field(client: TestClient) -> None:
    response = client.get(
        "/api/v1/estimate", params={"model": "meta-llama/Llama-2-7b-hf", "rank": "0", "seq_len": "x", "bogus": "1"}
    )
    body = assert_problem(response, 422, "invalid-input")
    assert body["title"] == "Invalid input"
    fields = {e["field"]: e["message"] for e in body["errors"]}
    assert fields == {
        "rank": "Input should be greater than or equal to 1",
        "seq_len": "Input should be a valid integer, unable to parse string as an integer",
        "bogus": "Extra inputs are not permitted",
    }
    each = "; ".join(f"{e['field']}: {e['message']}" for e in body["errors"])
    assert body["detail"] == f"3 problems: {each}"


def test_rules_spanning_fields_are_reported_on_plan(client: TestClient) -> None:
    response = client.post(
        "/api/v1/estimate", json={"model": "meta-llama/Llama-2-7b-hf", "method": "lora", "quant": "nf4"}
    )
    body = assert_problem(response, 422)
    assert body["errors"] == [
        {"field": "plan", "message": "method lora trains a 16-bit base: use method qlora for quant nf4"}
    ]


def test_malformed_json_and_missing_body(client: TestClient) -> None:
    bad = client.post("/api/v1/estimate", content=b"{not json", headers={"content-type": "application/json"})
    body = assert_problem(bad, 400, "invalid-json")
    where = "Expecting property name enclosed in double quotes at line 1 column 2"
    assert body["detail"] == f"the body is not valid JSON: {where}"
    assert body["errors"] == [{"field": "body", "message": body["detail"]}]
    binary = client.post("/api/v1/estimate", content=b"\xff", headers={"content-type": "application/json"})
    assert assert_problem(binary, 400, "invalid-json")["detail"] == "the body is not valid JSON: it is not UTF-8 text"
    missing = client.post("/api/v1/estimate")
    assert assert_problem(missing, 422)["errors"] == [{"field": "body", "message": "Field required"}]


def test_body_over_the_limit_is_refused_with_413(tmp_path: Path) -> None:
    with TestClient(build_app(tmp_path, max_body_bytes=2048)) as client:
        declared = client.post("/api/v1/estimate", content=b"x" * 4096, headers={"content-type": "application/json"})
        body = assert_problem(declared, 413, "content-too-large")
        assert "2048 bytes" in body["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts streamed bytes
            for _ in range(8):
                yield b"x" * 1024

        streamed = client.post("/api/v1/estimate", content=chunks(), headers={"content-type": "application/json"})
        assert_problem(streamed, 413, "content-too-large")
        ok = client.post("/api/v1/estimate", json={"model": "meta-llama/Llama-2-7b-hf"})
        assert ok.status_code == 200


def test_field_errors_strip_the_source_and_never_echo_input() -> None:
    errs = field_errors(
        [
            {"loc": ("query", "rank"), "msg": "too big", "input": "<script>"},
            {"loc": ("body",), "msg": "Value error, bad combo", "type": "value_error"},
            {"loc": ("body",), "msg": "Field required", "type": "missing"},
            {"loc": ("body", "targets", 0), "msg": "bad"},
        ]
    )
    assert [(e.field, e.message) for e in errs] == [
        ("rank", "too big"),
        ("plan", "bad combo"),
        ("body", "Field required"),
        ("targets.0", "bad"),
    ]


def test_auth_errors_carry_www_authenticate() -> None:
    problem, headers = to_problem(errors.AuthError("send a token"))
    assert problem.status == 401 and headers == {"WWW-Authenticate": 'Bearer realm="gpuplan"'}
