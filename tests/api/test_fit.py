"""Inverse planning: GET /api/v1/fit and app.core.fit find exactly the boundary of what fits."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.estimate import estimate
from app.core.fit import KNOB_LIMITS, fit, largest_fitting
from app.core.gpus import budget_bytes, find_tier
from app.core.plan import TrainingPlan
from tests.configs import spec
from tests.webapp import assert_problem


@pytest.mark.parametrize(
    ("model_id", "plan", "gpu"),
    [
        ("meta-llama/Llama-2-7b-hf", TrainingPlan(), "RTX 4090"),
        ("meta-llama/Llama-3.1-8B", TrainingPlan(method="lora", gradient_checkpointing=False), "H100 80GB"),
        ("Qwen/Qwen2.5-0.5B", TrainingPlan(method="full", optimizer="adamw"), "T4"),
    ],
)
def test_each_limit_fits_and_one_more_does_not(model_id: str, plan: TrainingPlan, gpu: str) -> None:
    model, tier = spec(model_id), find_tier(gpu)
    assert tier is not None
    budget = budget_bytes(tier, 0.10)
    result = fit(model, plan, tier, 0.10)
    for limit in (result.batch_size, result.seq_len, result.rank):
        if limit.value is None:
            continue
        at = estimate(model, plan.model_copy(update={limit.field: limit.value})).device_bytes
        assert at == limit.device_bytes and at <= budget
        if not limit.at_limit:
            above = estimate(model, plan.model_copy(update={limit.field: limit.value + 1})).device_bytes
            assert above > budget


def test_nothing_fits_gives_none_with_a_reason() -> None:
    tier = find_tier("T4")
    assert tier is not None
    result = fit(spec("meta-llama/Llama-2-70b-hf"), TrainingPlan(), tier, 0.10)
    for limit in (result.batch_size, result.seq_len, result.rank):
        assert limit.value is None and limit.reason and "over the" in limit.reason


def test_full_fine_tuning_has_no_rank_and_the_limit_can_be_reached() -> None:
    tier = find_tier("MI300X")
    assert tier is not None
    result = fit(spec("Qwen/Qwen2.5-0.5B"), TrainingPlan(method="full", optimizer="sgd"), tier, 0.10)
    assert result.rank.value is None and result.rank.reason and "full" in result.rank.reason
    tiny = largest_fitting(spec("Qwen/Qwen2.5-0.5B"), TrainingPlan(seq_len=16), "batch_size", 10**15)
    assert tiny.value == KNOB_LIMITS["batch_size"] and tiny.at_limit


def test_fit_endpoint(client: TestClient) -> None:
    response = client.get("/api/v1/fit", params={"model": "meta-llama/Llama-2-7b-hf", "gpu": "rtx 4090", "rank": 8})
    assert response.status_code == 200, response.text
    body = response.json()
    tier = find_tier("RTX 4090")
    assert tier is not None
    expected = fit(spec("meta-llama/Llama-2-7b-hf"), TrainingPlan(rank=8), tier, 0.10)
    assert body == expected.model_dump(mode="json")
    assert body["seq_len"]["note"] and "max_position_embeddings" in body["seq_len"]["note"]


def test_fit_endpoint_errors(client: TestClient) -> None:
    unknown = assert_problem(
        client.get("/api/v1/fit", params={"model": "meta-llama/Llama-2-7b-hf", "gpu": "GTX 480"}), 422
    )
    assert unknown["errors"][0]["field"] == "gpu" and "RTX 4090" in unknown["errors"][0]["message"]
    cpu = assert_problem(
        client.get(
            "/api/v1/fit",
            params={"model": "meta-llama/Llama-2-7b-hf", "gpu": "T4", "device": "cpu", "optimizer": "adamw"},
        ),
        422,
        "invalid-plan",
    )
    assert cpu["errors"] == [{"field": "device", "message": "fitting a GPU tier needs device cuda"}]
    missing = assert_problem(client.get("/api/v1/fit", params={"model": "meta-llama/Llama-2-7b-hf"}), 422)
    assert missing["errors"] == [{"field": "gpu", "message": "Field required"}]
    assert_problem(client.get("/api/v1/fit", params={"model": "nobody/nothing", "gpu": "T4"}), 404, "model-not-found")
