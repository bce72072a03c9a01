"""Calibration routes over the StoreDep seam: 503 without a store, listing, bearer-token upload, accuracy."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.store.models import AccuracyStats, AccuracySummary
from app.store.query import MeasurementQuery
from tests.webapp import UPLOAD_TOKEN, FakeStore, assert_problem, build_app, make_record


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/v1/calibrations"), ("POST", "/api/v1/calibrations"), ("GET", "/api/v1/accuracy")]
)
def test_without_a_store_every_calibration_route_is_503(client: TestClient, method: str, path: str) -> None:
    kwargs = {"json": make_record().model_dump(mode="json", exclude={"error_pct"})} if method == "POST" else {}
    headers = {"Authorization": f"Bearer {UPLOAD_TOKEN}"}
    body = assert_problem(client.request(method, path, headers=headers, **kwargs), 503, "store-not-configured")
    assert body["title"] == "Store not configured"


def test_list_passes_filters_and_returns_records(store_client: TestClient, store: FakeStore) -> None:
    store.add_measurement(make_record(device="cpu", device_name=None, measured_reserved_bytes=None))
    store.add_measurement(make_record(created_at=datetime(2025, 2, 1, tzinfo=UTC)))
    everything = store_client.get("/api/v1/calibrations").json()
    assert [r["id"] for r in everything] == [2, 1]
    assert everything[0]["error_pct"] == 5.0
    cuda = store_client.get(
        "/api/v1/calibrations", params={"device": "cuda", "model": "meta-llama/Llama-2-7b-hf", "limit": 5}
    )
    assert [r["id"] for r in cuda.json()] == [2]
    assert store.page_calls[-1] == MeasurementQuery(model="meta-llama/Llama-2-7b-hf", device="cuda", limit=5)
    assert_problem(store_client.get("/api/v1/calibrations", params={"limit": 0}), 422)
    assert_problem(store_client.get("/api/v1/calibrations", params={"device": "tpu"}), 422)


def upload_body() -> dict:
    return make_record(id=99).model_dump(mode="json", exclude={"error_pct"})


def test_upload_needs_the_bearer_token(store_client: TestClient, store: FakeStore) -> None:
    missing = store_client.post("/api/v1/calibrations", json=upload_body())
    assert_problem(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = store_client.post("/api/v1/calibrations", json=upload_body(), headers={"Authorization": "Bearer nope"})
    assert_problem(wrong, 403, "forbidden")
    basic = store_client.post("/api/v1/calibrations", json=upload_body(), headers={"Authorization": "Basic abc"})
    assert_problem(basic, 401)
    assert store.records == []
    ok = store_client.post(
        "/api/v1/calibrations", json=upload_body(), headers={"Authorization": f"Bearer {UPLOAD_TOKEN}"}
    )
    assert ok.status_code == 201 and ok.json() == {"id": 1}
    assert store.records[0].id == 1 and store.records[0].model_id == "meta-llama/Llama-2-7b-hf"


def test_auth_is_checked_before_the_store(client: TestClient) -> None:
    assert_problem(client.post("/api/v1/calibrations", json=upload_body()), 401, "unauthorized")


def test_uploads_are_refused_when_no_token_is_configured(tmp_path: Path) -> None:
    with TestClient(build_app(tmp_path, store=FakeStore(), upload_token=None)) as client:
        response = client.post("/api/v1/calibrations", json=upload_body(), headers={"Authorization": "Bearer anything"})
    body = assert_problem(response, 403, "forbidden")
    assert "GPUPLAN_UPLOAD_TOKEN" in body["detail"]


def test_invalid_uploads_name_the_field(store_client: TestClient) -> None:
    body = upload_body() | {"measured_peak_bytes": 0}
    response = store_client.post("/api/v1/calibrations", json=body, headers={"Authorization": f"Bearer {UPLOAD_TOKEN}"})
    assert assert_problem(response, 422)["errors"][0]["field"] == "measured_peak_bytes"


def test_accuracy_from_a_dict_or_a_model(tmp_path: Path) -> None:
    stats = AccuracyStats.from_errors([5.0, -3.0])
    summary = AccuracySummary(overall=stats, by_device={"cuda": stats}, by_split={})
    for given, expected in ((summary, summary.model_dump(mode="json")), ({"overall": None}, {"overall": None})):
        with TestClient(build_app(tmp_path, store=FakeStore(accuracy=given))) as client:
            assert client.get("/api/v1/accuracy").json() == expected
