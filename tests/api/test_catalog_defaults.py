"""Every catalog model gets an answer with the default plan, through the API and the result page."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.catalog import catalog_ids


@pytest.mark.parametrize("model_id", catalog_ids())
def test_the_default_plan_answers_for_every_catalog_model(client: TestClient, model_id: str) -> None:
    response = client.get("/api/v1/estimate", params={"model": model_id})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["peak_allocated_bytes"] > 0 and body["model"]["id"] == model_id
    for adjustment in body["adjustments"]:  # said at the top of the answer, with the stack's reason
        assert adjustment["field"] in ("dropout", "dora", "targets", "attn") and adjustment["why"]


def test_the_result_page_says_what_was_changed_at_the_top(client: TestClient) -> None:
    page = client.get("/plan", params={"model": "mistralai/Mixtral-8x7B-v0.1"}).text
    top = page[: page.index('id="verdict"')]
    assert 'id="adjustments"' in top and "dropout" in top and "ParamWrapper" in top


def test_repeated_targets_in_the_page_query_are_all_kept(client: TestClient) -> None:
    page = client.get("/plan?model=meta-llama/Llama-2-7b-hf&method=lora&targets=q_proj&targets=v_proj").text
    assert "targets q_proj,v_proj" in page


def test_kept_mxfp4_experts_are_answered_dequantized_and_strict_is_a_problem(client: TestClient) -> None:
    plan = {"model": "openai/gpt-oss-20b", "method": "lora", "dropout": 0, "attn": "eager", "mxfp4": "keep"}
    body = client.get("/api/v1/estimate", params=plan).json()
    assert [(a["field"], a["used"]) for a in body["adjustments"]] == [("mxfp4", "dequantize")]
    assert "is_trainable" in body["adjustments"][0]["why"]
    refused = client.get("/api/v1/estimate", params={**plan, "strict": "true"})
    assert refused.status_code == 422 and refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["errors"][0]["field"] == "mxfp4"
    dense = client.get("/api/v1/estimate", params={"model": "meta-llama/Llama-3.1-8B", "mxfp4": "keep"})
    assert dense.status_code == 422 and "leave mxfp4 at dequantize" in dense.json()["detail"]
