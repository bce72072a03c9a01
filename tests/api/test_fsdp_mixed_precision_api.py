"""The JSON API answers FSDP2's mixed-precision policy, and refuses it (422, saying what to change) off FSDP2."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.webapp import assert_problem

MODEL = "meta-llama/Llama-2-7b-hf"
PLAN = {"model": MODEL, "method": "full", "optimizer": "adamw", "gpus": 8, "seq_len": 2048}


def test_the_policy_is_estimated_with_measured_terms(client: TestClient) -> None:
    body = {**PLAN, "sharding": "fsdp", "fsdp_mixed_precision": True, "fsdp_reduce_dtype": "fp32"}
    response = client.post("/api/v1/estimate", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["plan"]["fsdp_mixed_precision"] is True and out["plan"]["fsdp_reduce_dtype"] == "fp32"
    evidence = {t["term"]: t["evidence"] for t in out["breakdown"]}
    assert evidence["base_weight_bytes"] == "measured-cpu-ranks"
    plain = client.post("/api/v1/estimate", json={**PLAN, "sharding": "fsdp"}).json()
    weights = {t["term"]: t["bytes"] for t in out["breakdown"]}["base_weight_bytes"]
    assert weights > 1.9 * {t["term"]: t["bytes"] for t in plain["breakdown"]}["base_weight_bytes"]  # fp32 shards


def test_the_policy_off_fsdp_is_a_422_that_names_the_fix(client: TestClient) -> None:
    problem = assert_problem(
        client.post("/api/v1/estimate", json={**PLAN, "sharding": "ddp", "fsdp_mixed_precision": True}), 422
    )
    assert "use sharding fsdp or fsdp_grad_op" in problem["detail"] + str(problem.get("errors"))
