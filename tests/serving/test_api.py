"""POST/GET /api/v1/inference: JSON and exports, and bad input as problem+json."""

from __future__ import annotations

import csv
import io

from fastapi.testclient import TestClient

from tests.webapp import assert_problem

URL = "/api/v1/inference"


def test_post_answers_the_golden_kv_cache(client: TestClient) -> None:
    response = client.post(URL, json={"model": "meta-llama/Llama-3.1-8B", "context": 8192})
    assert response.status_code == 200, response.text
    body = response.json()
    terms = {t["term"]: t for t in body["breakdown"]}
    assert terms["kv_cache_bytes"]["bytes"] == 1_073_741_824
    assert terms["activation_peak_bytes"]["first_principles"] is True
    assert terms["kv_cache_bytes"]["first_principles"] is False and "vllm" in terms["kv_cache_bytes"]["source"]
    assert body["model"]["id"] == "meta-llama/Llama-3.1-8B" and body["plan"]["engine"] == "vllm"
    assert body["vllm_version"].startswith("vLLM v0.33.0") and body["vllm_tag"] == "v0.33.0"
    assert any(f.startswith("vllm/v1/worker/gpu_worker.py") for f in body["vllm_files"])
    assert "activation_peak_bytes" in body["first_principles"]
    tiers = {t["gpu"]: t for t in body["recommendations"]["tiers"]}
    assert tiers["H100 80GB"]["fits"] and tiers["H100 80GB"]["max_concurrency"] > 10
    assert not tiers["RTX 3060"]["fits"] and tiers["RTX 3060"]["gpus_needed"] == 2


def test_get_takes_the_plan_as_query_parameters(client: TestClient) -> None:
    query = "model=google/gemma-2-9b&engine=transformers&context=8192&concurrency=2&gpu=H100%2080GB"
    body = client.get(f"{URL}?{query}").json()
    assert body["plan"]["engine"] == "transformers" and body["plan"]["concurrency"] == 2
    assert body["layout"]["window"] == 4096
    assert body["stretch"]["gpu"] == "H100 80GB" and body["stretch"]["max_concurrency"] >= 2


def test_exports_are_markdown_and_csv(client: TestClient) -> None:
    md = client.get(f"{URL}?model=meta-llama/Llama-3.1-8B&format=md")
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert md.text.startswith("# GPU serving plan: meta-llama/Llama-3.1-8B") and "| kv_cache_bytes |" in md.text
    rows = list(csv.reader(io.StringIO(client.get(f"{URL}?model=meta-llama/Llama-3.1-8B&format=csv").text)))
    assert rows[0] == ["term", "bytes", "category", "counted", "first_principles", "note"]
    assert any(r[0] == "kv_cache_bytes" for r in rows)


def test_bad_fields_are_422_problems_naming_each(client: TestClient) -> None:
    body = assert_problem(
        client.post(URL, json={"model": "meta-llama/Llama-3.1-8B", "context": 0, "engine": "tgi"}), 422
    )
    assert {e["field"] for e in body["errors"]} == {"context", "engine"}
    body = assert_problem(client.get(f"{URL}?model=meta-llama/Llama-3.1-8B&block_size=12"), 422)
    assert body["errors"][0]["field"] == "block_size"
    body = assert_problem(client.post(URL, json={"model": "meta-llama/Llama-3.1-8B", "unknown": 1}), 422)
    assert body["errors"][0]["field"] == "unknown"


def test_plans_the_model_refuses_are_422_problems(client: TestClient) -> None:
    body = assert_problem(client.post(URL, json={"model": "meta-llama/Llama-3.1-8B", "tp": 3}), 422)
    assert body["errors"][0]["field"] == "tp" and "32 attention heads" in body["errors"][0]["message"]
    body = assert_problem(client.post(URL, json={"model": "meta-llama/Llama-3.1-8B", "gpu": "GTX 9999"}), 422)
    assert body["errors"][0]["field"] == "gpu"
    body = assert_problem(
        client.post(URL, json={"model": "meta-llama/Llama-3.1-8B", "adapters": 2, "adapter_rank": 24}), 422
    )
    assert body["errors"][0]["field"] == "adapter_rank"


def test_unknown_models_are_404_problems(client: TestClient) -> None:
    assert_problem(client.get(f"{URL}?model=nobody/nothing"), 404)
    assert_problem(client.get(URL), 422)  # no model
