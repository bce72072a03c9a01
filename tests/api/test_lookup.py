"""GET /api/v1/models, /models/{org}/{name} and /gpus."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.catalog import catalog_ids, load_spec
from app.core.gpus import GPU_TIERS
from tests.webapp import HUB_SHA, assert_problem


def test_models_lists_the_whole_catalog(client: TestClient) -> None:
    rows = client.get("/api/v1/models").json()
    assert [r["id"] for r in rows] == list(catalog_ids())
    llama = next(r for r in rows if r["id"] == "meta-llama/Llama-2-7b-hf")
    assert llama == {
        "id": "meta-llama/Llama-2-7b-hf",
        "family": "Llama 2",
        "released": "2023-07",
        "architecture": "LlamaForCausalLM",
        "model_type": "llama",
        "num_params": 6_738_415_616,
        "num_experts": 0,
        "layers": 32,
        "hidden_size": 4096,
        "vocab_size": 32000,
    }


def test_models_by_family_size_moe_and_release(client: TestClient) -> None:
    def ids(**params: object) -> list[str]:
        response = client.get("/api/v1/models", params=params)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()]

    qwen3 = ids(family="qwen3", sort="params")
    assert qwen3[0] == "Qwen/Qwen3-0.6B" and qwen3[-1] == "Qwen/Qwen3-235B-A22B" and len(qwen3) == 8
    assert ids(family="Qwen3", moe="true") == ["Qwen/Qwen3-235B-A22B", "Qwen/Qwen3-30B-A3B"]
    small = ids(max_params=1_000_000_000)
    assert "Qwen/Qwen3-0.6B" in small and "meta-llama/Llama-3.1-8B" not in small
    recent = client.get("/api/v1/models", params={"released_from": "2025-04", "sort": "released"}).json()
    assert recent[0]["released"] == max(r["released"] for r in recent) and all(
        r["released"] >= "2025-04" for r in recent
    )
    assert {"openai/gpt-oss-20b", "meta-llama/Llama-4-Scout-17B-16E"} <= set(ids(released_from="2025-04"))
    for bad in ({"released_from": "2025"}, {"sort": "size"}, {"min_params": "-1"}, {"moe": "maybe"}):
        assert_problem(client.get("/api/v1/models", params=bad), 422)


@pytest.mark.parametrize(
    ("q", "expect"),
    [("QWEN2.5-7", ["Qwen/Qwen2.5-72B", "Qwen/Qwen2.5-7B"]), ("mixtral", ["mistralai/Mixtral-8x7B-v0.1"]), ("zzz", [])],
)
def test_models_filter(client: TestClient, q: str, expect: list[str]) -> None:
    assert [r["id"] for r in client.get("/api/v1/models", params={"q": q}).json()] == expect


def test_models_filter_matches_model_type(client: TestClient) -> None:
    ids = [r["id"] for r in client.get("/api/v1/models", params={"q": "gemma2"}).json()]
    assert ids and all("gemma-2" in i for i in ids)
    assert_problem(client.get("/api/v1/models", params={"q": "x" * 101}), 422)


def test_model_summary_from_the_catalog(client: TestClient) -> None:
    body = client.get("/api/v1/models/meta-llama/Llama-2-7b-hf").json()
    spec = load_spec("meta-llama/Llama-2-7b-hf")
    assert spec is not None
    assert body["id"] == "meta-llama/Llama-2-7b-hf" and body["source"] == "catalog" and body["revision"] is None
    assert body["arch"] == spec.arch.model_dump(mode="json")
    assert body["module_groups"] == len(spec.groups)
    assert body["num_params"] == spec.num_params


def test_model_summary_through_the_hub(client: TestClient) -> None:
    body = client.get("/api/v1/models/tiny/llama").json()
    assert body["source"] == "hub" and body["revision"] == HUB_SHA and body["architecture"] == "LlamaForCausalLM"
    assert body["published_params"] == 123_456 and body["arch"]["num_layers"] == 2 and body["module_groups"] > 0


def test_model_summary_errors(client: TestClient) -> None:
    assert_problem(client.get("/api/v1/models/nobody/nothing"), 404, "model-not-found")
    assert_problem(client.get("/api/v1/models/gated/model"), 403, "gated-model")
    assert_problem(client.get("/api/v1/models/bad%20org/name"), 422)
    assert_problem(client.get("/api/v1/models/a/b", params={"revision": ""}), 422)


def test_gpus(client: TestClient) -> None:
    assert client.get("/api/v1/gpus").json() == [t.model_dump(mode="json") for t in GPU_TIERS]
