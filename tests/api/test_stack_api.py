"""The stack as an API input: the default plan of an MoE model on transformers-4 answers (no ParamWrapper refusal)."""

from __future__ import annotations

from fastapi.testclient import TestClient

MIXTRAL = "mistralai/Mixtral-8x7B-v0.1"


def test_the_default_plan_answers_on_both_stacks_and_says_which(client: TestClient) -> None:
    four = client.get("/api/v1/estimate", params={"model": MIXTRAL, "stack": "transformers-4"})
    five = client.get("/api/v1/estimate", params={"model": MIXTRAL})
    assert four.status_code == 200 and five.status_code == 200, four.text
    assert four.json()["plan"]["stack"] == "transformers-4" and five.json()["plan"]["stack"] == "transformers-5"
    assert four.json()["plan"]["dropout"] == 0.05 and five.json()["plan"]["dropout"] == 0.0  # stated adjustment
    assert four.json()["peak_allocated_bytes"] * 3 < five.json()["peak_allocated_bytes"]
    page = client.get("/plan", params={"model": MIXTRAL, "stack": "transformers-4"})
    assert page.status_code == 200 and "software stack transformers-4" in page.text
    bad = client.get("/api/v1/estimate", params={"model": MIXTRAL, "stack": "transformers-3"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "stack"
