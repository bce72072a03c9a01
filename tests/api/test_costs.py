"""Time and cost in the JSON API: the run size in the query, options ranked by cost, prices with their dates."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from app.catalog import load_spec
from app.core.estimate import estimate
from app.core.gpus import recommend
from app.core.plan import TrainingPlan
from app.core.throughput import RunSize
from app.http.schemas import EstimateResponse
from tests.webapp import assert_problem, build_app

LLAMA = "meta-llama/Llama-2-7b-hf"


def test_recommendations_rank_options_by_the_cost_of_the_run(client: TestClient) -> None:
    body = client.get("/api/v1/estimate", params={"model": LLAMA}).json()
    EstimateResponse.model_validate(body)
    rec = body["recommendations"]
    assert rec["time_model"] == {
        "train_tokens": 100_000_000,
        "epochs": 1.0,
        "total_tokens": 100_000_000.0,
        "mfu": 0.4,
        "label": "a first-principles model, not a measurement",
        "prices": "bundled",
    }
    costs = [o["cost_usd"] for o in rec["options"] if o["cost_usd"] is not None]
    assert costs == sorted(costs) and rec["recommended"] == rec["options"][0]["gpu"]
    assert all(o["price"]["as_of"] and o["price"]["source"] for o in rec["options"] if o["cost_usd"] is not None)
    assert rec["fastest"]["hours"] == min(o["hours"] for o in rec["options"])
    t4 = next(t for t in rec["tiers"] if t["gpu"] == "T4")
    assert (
        not t4["runs"] and t4["cannot_run"].startswith("cannot run: no bf16") and t4["runs_with"] == {"dtype": "fp16"}
    )


def test_train_tokens_and_epochs_size_the_run(client: TestClient) -> None:
    base = client.get("/api/v1/estimate", params={"model": LLAMA}).json()["recommendations"]
    more = client.get("/api/v1/estimate", params={"model": LLAMA, "train_tokens": "50000000", "epochs": "4"})
    assert more.status_code == 200, more.text
    rec = more.json()["recommendations"]
    assert rec["time_model"]["total_tokens"] == 200_000_000
    assert rec["options"][0]["hours"] == base["options"][0]["hours"] * 2
    posted = client.post("/api/v1/estimate?train_tokens=50000000&epochs=4", json={"model": LLAMA})
    assert posted.json()["recommendations"] == rec
    # the same as the core computes for that run
    spec = load_spec(LLAMA)
    assert spec is not None
    expected = recommend(spec, estimate(spec, TrainingPlan()), 0.10, run=RunSize(train_tokens=50_000_000, epochs=4))
    assert rec == json.loads(expected.model_dump_json())


def test_bad_run_sizes_are_problems(client: TestClient) -> None:
    for params in ({"train_tokens": "0"}, {"train_tokens": "lots"}, {"epochs": "-1"}):
        body = assert_problem(client.get("/api/v1/estimate", params={"model": LLAMA, **params}), 422)
        assert body["errors"][0]["field"] in ("train_tokens", "epochs")


def test_markdown_shows_the_cost_of_each_option_with_its_date(client: TestClient) -> None:
    md = client.get("/api/v1/estimate", params={"model": LLAMA, "format": "md"}).text
    assert "## Options, cheapest run first" in md and "**Recommended: 1 x " in md
    rows = [line for line in md.splitlines() if line.startswith("| 1 | 1 x ")]
    assert rows and "$" in rows[0] and "(as of 20" in rows[0]
    assert "a first-principles model, not a measurement" in md and "40% MFU" in md
    assert "cannot run: no bf16 (use fp16, or a GPU from Ampere on)" in md


def test_a_price_file_in_the_data_dir_prices_the_options(tmp_path: Path) -> None:
    prices = tmp_path / "data" / "prices.json"  # build_app's data_dir
    prices.parent.mkdir(parents=True)
    prices.write_text(
        json.dumps(
            {
                "prices": [
                    {"gpu": "L4", "usd": 0.01, "provider": "Our cluster", "as_of": "2026-07-01", "source": "internal"}
                ]
            }
        )
    )
    with TestClient(build_app(tmp_path)) as client:
        rec = client.get("/api/v1/estimate", params={"model": LLAMA}).json()["recommendations"]
    assert rec["recommended"] == "L4" and rec["options"][0]["price"]["provider"] == "Our cluster"
    assert rec["time_model"]["prices"].endswith("prices.json")
    prices.write_text("{broken")
    with TestClient(build_app(tmp_path)) as client:
        body = assert_problem(client.get("/api/v1/estimate", params={"model": LLAMA}), 422)
    assert "prices file" in body["detail"] and "not JSON" in body["detail"]
