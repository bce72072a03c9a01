"""POST and GET /api/v1/estimate: the report.payload contract, exports, input limits and model resolution."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET

import pytest
from fastapi.testclient import TestClient

from app.catalog import load_spec
from app.core.band import BandAnswer
from app.core.estimate import estimate
from app.core.gpus import recommend
from app.core.plan import MAX_BATCH, MAX_GPUS, MAX_RANK, MAX_SEQ_LEN, TrainingPlan
from app.exports import report
from app.http.band import band_for
from app.http.schemas import EstimateResponse
from app.service import Planned
from tests.webapp import HUB_SHA, assert_problem

LLAMA = "meta-llama/Llama-2-7b-hf"


def expected_payload(plan: TrainingPlan, model_id: str = LLAMA) -> dict:
    spec = load_spec(model_id)
    assert spec is not None
    est = estimate(spec, plan)
    rec = recommend(spec, est, 0.10) if plan.device == "cuda" else None
    _, band, _ = band_for(None, Planned(model=spec, estimate=est, recommendation=rec))  # the test app has no store
    return json.loads(json.dumps(report.payload(spec, est, rec, band)))


def test_get_estimate_is_report_payload(client: TestClient) -> None:
    response = client.get("/api/v1/estimate", params={"model": LLAMA})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == expected_payload(TrainingPlan())
    EstimateResponse.model_validate(response.json())  # the documented schema holds


def test_post_estimate_with_a_full_plan(client: TestClient) -> None:
    body = {
        "model": "Qwen/Qwen2.5-7B",
        "method": "lora",
        "rank": 8,
        "alpha": 16,
        "targets": ["q_proj", "v_proj"],
        "seq_len": 4096,
        "batch_size": 2,
        "gradient_checkpointing": False,
        "optimizer": "adamw",
        "gpus": 2,
        "sharding": "fsdp",
    }
    response = client.post("/api/v1/estimate", json=body)
    assert response.status_code == 200, response.text
    plan = TrainingPlan(**{k: v for k, v in body.items() if k != "model"})
    assert response.json() == expected_payload(plan, "Qwen/Qwen2.5-7B")
    assert response.json()["plan"]["targets"] == ["q_proj", "v_proj"]


def test_targets_in_the_query_are_comma_separated_or_repeated(client: TestClient) -> None:
    joined = client.get("/api/v1/estimate", params={"model": LLAMA, "targets": "q_proj,v_proj"})
    repeated = client.get("/api/v1/estimate", params=[("model", LLAMA), ("targets", "q_proj"), ("targets", "v_proj")])
    assert joined.status_code == repeated.status_code == 200
    assert joined.json() == repeated.json()
    assert joined.json()["plan"]["targets"] == ["q_proj", "v_proj"]
    all_linear = client.get("/api/v1/estimate", params={"model": LLAMA, "targets": "all-linear"})
    assert all_linear.json()["plan"]["targets"] == "all-linear"


def test_cpu_plans_have_no_recommendation(client: TestClient) -> None:
    response = client.get("/api/v1/estimate", params={"model": LLAMA, "device": "cpu", "optimizer": "adamw"})
    assert response.status_code == 200
    assert response.json()["recommendations"] is None


def test_exports_markdown_csv_svg(client: TestClient) -> None:
    spec = load_spec(LLAMA)
    assert spec is not None
    est = estimate(spec, TrainingPlan())
    md = client.get("/api/v1/estimate", params={"model": LLAMA, "format": "md"})
    assert md.headers["content-type"].startswith("text/markdown")
    no_store = BandAnswer(band=None, reason="no measurement store")
    assert md.text == report.markdown(spec, est, recommend(spec, est, 0.10), no_store)
    assert md.text.startswith(f"# GPU memory plan: {LLAMA} on 1 GPU\n")
    assert "- Uncertainty: no uncertainty band: no measurement store" in md.text
    table = client.get("/api/v1/estimate", params={"model": LLAMA, "format": "csv"})
    assert table.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(table.text)))
    assert rows[0] == ["term", "bytes", "category", "counted", "note"]
    assert rows[-1][:2] == ["device_bytes", str(est.device_bytes)]
    svg = client.get("/api/v1/estimate", params={"model": LLAMA, "format": "svg"})
    assert svg.headers["content-type"] == "image/svg+xml"
    root = ET.fromstring(svg.content)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    posted = client.post("/api/v1/estimate?format=md", json={"model": LLAMA})
    assert posted.text == md.text


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seq_len", MAX_SEQ_LEN + 1, f"Input should be less than or equal to {MAX_SEQ_LEN}"),
        ("batch_size", MAX_BATCH + 1, f"Input should be less than or equal to {MAX_BATCH}"),
        ("rank", MAX_RANK + 1, f"Input should be less than or equal to {MAX_RANK}"),
        ("gpus", MAX_GPUS + 1, f"Input should be less than or equal to {MAX_GPUS}"),
        ("seq_len", 0, "Input should be greater than or equal to 1"),
        ("dropout", 1, "Input should be less than 1"),
    ],
)
def test_input_limits_say_which_field_and_why(client: TestClient, field: str, value: int, message: str) -> None:
    for response in (
        client.get("/api/v1/estimate", params={"model": LLAMA, field: value}),
        client.post("/api/v1/estimate", json={"model": LLAMA, field: value}),
    ):
        body = assert_problem(response, 422, "invalid-input")
        assert body["errors"] == [{"field": field, "message": message}]
        assert body["detail"] == f"{field}: {message}"


def test_the_limits_themselves_are_accepted(client: TestClient) -> None:
    response = client.get("/api/v1/estimate", params={"model": LLAMA, "batch_size": MAX_BATCH, "gpus": 8})
    assert response.status_code == 200


def test_plan_errors_from_the_core_are_422(client: TestClient) -> None:
    body = assert_problem(
        client.get("/api/v1/estimate", params={"model": LLAMA, "targets": "qkv_proj"}), 422, "invalid-plan"
    )
    assert "none of the targets" in body["detail"]
    bad_target = assert_problem(client.get("/api/v1/estimate", params={"model": LLAMA, "targets": "q_proj;rm"}), 422)
    assert bad_target["errors"][0]["field"] == "targets"


def test_model_errors(client: TestClient) -> None:
    assert_problem(client.get("/api/v1/estimate", params={"model": "not a model"}), 400, "invalid-model-id")
    assert_problem(client.get("/api/v1/estimate", params={"model": "nobody/nothing"}), 404, "model-not-found")
    assert_problem(client.get("/api/v1/estimate", params={"model": "gated/model"}), 403, "gated-model")
    assert_problem(client.get("/api/v1/estimate"), 422)
    assert_problem(client.post("/api/v1/estimate", json={"model": ""}), 422)
    assert_problem(client.post("/api/v1/estimate", json={"model": "../../etc/passwd.json"}), 400, "invalid-model-id")


def test_a_hub_model_is_fetched_and_estimated(client: TestClient) -> None:
    response = client.get("/api/v1/estimate", params={"model": "tiny/llama", "format": "json"})
    assert response.status_code == 200, response.text
    model = response.json()["model"]
    assert model == {
        "id": "tiny/llama",
        "source": "hub",
        "revision": HUB_SHA,
        "architecture": "LlamaForCausalLM",
        "model_type": "llama",
        "num_params": model["num_params"],
    }
    assert model["num_params"] > 0


def test_repeated_requests_are_answered_from_the_cache(client: TestClient) -> None:
    first = client.get("/api/v1/estimate", params={"model": LLAMA, "rank": 32})
    second = client.post("/api/v1/estimate", json={"model": LLAMA, "rank": 32})
    assert first.json() == second.json()
    planner = client.app.state.planner  # type: ignore[attr-defined]
    assert len(planner._cache) == 1
