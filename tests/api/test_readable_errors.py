"""Each error says what is wrong in the request's own terms: its field, its key, its body's shape."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.webapp import assert_problem

MODEL = "meta-llama/Llama-2-7b-hf"
JSON = {"content-type": "application/json"}


def test_invalid_json_names_line_and_column_not_a_character_offset(client: TestClient) -> None:
    body = b'{\n  "model": "%s",\n  "rank": 16,,\n}' % MODEL.encode()
    problem = assert_problem(client.post("/api/v1/estimate", content=body, headers=JSON), 400, "invalid-json")
    assert problem["detail"] == (
        "the body is not valid JSON: Expecting property name enclosed in double quotes at line 3 column 14"
    )
    assert [e["field"] for e in problem["errors"]] == ["body"]


@pytest.mark.parametrize(("body", "kind"), [(b"[1, 2]", "an array"), (b'"qlora"', "a string"), (b"16", "a number")])
def test_a_body_that_is_not_an_object_says_so(client: TestClient, body: bytes, kind: str) -> None:
    problem = assert_problem(client.post("/api/v1/estimate", content=body, headers=JSON), 422)
    message = f'the body must be a JSON object of the request\'s fields, e.g. {{"model": "..."}}, not {kind}'
    assert problem["errors"] == [{"field": "body", "message": message}]
    assert "plan" not in problem["detail"]


def test_a_json_body_sent_as_text_names_the_content_type(client: TestClient) -> None:
    sent = client.post("/api/v1/estimate", content=b'{"model": "x"}', headers={"content-type": "text/plain"})
    problem = assert_problem(sent, 422)
    assert problem["errors"][0]["field"] == "body"
    assert "Content-Type: application/json" in problem["errors"][0]["message"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_dropout_nan_must_be_a_finite_number(client: TestClient, value: str) -> None:
    body = f'{{"model": "{MODEL}", "dropout": {value}}}'.encode()
    problem = assert_problem(client.post("/api/v1/estimate", content=body, headers=JSON), 422)
    assert problem["errors"] == [{"field": "dropout", "message": "Input should be a finite number"}]
    query = client.get("/api/v1/estimate", params={"model": MODEL, "dropout": "nan"})
    assert assert_problem(query, 422)["errors"] == problem["errors"]


def test_a_repeated_query_key_says_it_was_given_twice(client: TestClient) -> None:
    problem = assert_problem(client.get(f"/api/v1/estimate?model={MODEL}&rank=8&rank=64"), 422)
    message = "given 2 times in the query string: give it once"
    assert problem["errors"] == [{"field": "rank", "message": message}]
    assert problem["detail"] == f"rank: {message}"
    # targets may be repeated: that is how a list is spelled in a query string
    ok = client.get(f"/api/v1/estimate?model={MODEL}&method=lora&quant=none&targets=q_proj&targets=v_proj")
    assert ok.status_code == 200, ok.text
    assert ok.json()["plan"]["targets"] == ["q_proj", "v_proj"]


def test_several_errors_are_counted_not_trailed_by_and_more(client: TestClient) -> None:
    params = {"model": MODEL, "rank": "0", "seq_len": "x", "method": "nope", "dropout": "2"}
    problem = assert_problem(client.get("/api/v1/estimate", params=params), 422)
    assert problem["detail"].startswith("4 problems: ")
    assert "more)" not in problem["detail"]
    for field in ("rank", "seq_len", "method", "dropout"):
        assert f"{field}: " in problem["detail"]
