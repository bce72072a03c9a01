"""A fresh service starts with the measured runs gpuplan ships, and the result page quotes them."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from app.store import Store
from app.store.seed import BUNDLED_RESULTS, seed_store
from tests.webapp import make_settings


def test_bundled_results_seed_an_empty_store_once(tmp_path: Path) -> None:
    files = sorted(BUNDLED_RESULTS.glob("*.store.jsonl"))
    assert files, "calibration/results must ship measured runs"
    lines = sum(1 for f in files for line in f.read_text().splitlines() if line.strip())
    with Store.open(f"sqlite:///{tmp_path / 's.sqlite3'}") as store:
        assert seed_store(store) == lines
        assert seed_store(store) == 0  # not twice
        assert len(store.list_measurements(limit=10_000)) == lines


def test_result_page_quotes_cpu_reference_runs_when_no_cuda_runs_exist(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))  # store from settings: SQLite in tmp, seeded on start
    with TestClient(app) as client:
        page = client.get("/plan", params={"model": "meta-llama/Llama-2-7b-hf", "method": "lora"})
        assert page.status_code == 200
        assert "comparable measured run" in page.text and "CPU reference tracker" in page.text
        accuracy = client.get("/api/v1/accuracy").json()
        assert accuracy["overall"]["count"] >= 48
