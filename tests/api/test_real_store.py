"""The calibration routes and the result page against app.store's real SQLite store, not the fake."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient

from tests.webapp import UPLOAD_TOKEN, build_app, make_record


def test_upload_list_accuracy_and_comparable_runs_with_sqlite(tmp_path: Path) -> None:
    from app.store import Store

    store = Store.open(f"sqlite:///{(tmp_path / 'store.sqlite3').as_posix()}")
    try:
        with TestClient(build_app(tmp_path, store=store)) as client:
            auth = {"Authorization": f"Bearer {UPLOAD_TOKEN}"}
            for day, estimated in ((1, 1_050_000_000), (2, 970_000_000)):
                run = make_record(estimated_peak_bytes=estimated, created_at=datetime(2025, 3, day, tzinfo=UTC))
                body = run.model_dump(mode="json", exclude={"error_pct", "id"})
                assert client.post("/api/v1/calibrations", json=body, headers=auth).status_code == 201
            listed = client.get("/api/v1/calibrations", params={"device": "cuda"}).json()
            assert sorted(r["error_pct"] for r in listed) == [-3.0, 5.0]
            assert {r["verified"] for r in listed} == {False}
            accuracy = client.get("/api/v1/accuracy").json()
            # uploads are kept apart until an operator accepts their source
            assert accuracy["overall"] is None and accuracy["unverified"]["count"] == 2
            assert accuracy["by_source"][0]["source"] == "gpu-h200" and accuracy["by_source"][0]["verified_runs"] == 0
            assert client.get("/plan", params={"model": "meta-llama/Llama-2-7b-hf"}).context["comparable"] is None  # type: ignore[attr-defined]
            assert store.accept("gpu-h200") == 2
            accuracy = client.get("/api/v1/accuracy").json()
            assert accuracy["overall"]["count"] == 2 and accuracy["overall"]["max_abs_error_pct"] == 5.0
            page = client.get("/plan", params={"model": "meta-llama/Llama-2-7b-hf"})
            assert page.context["comparable"].count == 2  # type: ignore[attr-defined]
            assert "On <strong>2</strong> comparable measured runs" in page.text
            assert client.get("/calibrations").text.count('class="point"') == 2
    finally:
        store.close()
