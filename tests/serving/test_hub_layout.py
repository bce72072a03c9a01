"""A Hub or uploaded model's KV layout is read from its own config.json (sliding windows, alternating layers, MLA),
as a catalog entry's is: through a fake Hub (httpx.MockTransport) and `config:<hash>` uploads, never the live Hub.

Every expected byte count is worked out by hand below from vLLM v0.33.0's page, group and block arithmetic.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app import uploads
from app.main import create_app
from app.serving.calibrate import FAMILIES
from tests.webapp import HUB_SHA, make_settings

# Gemma 2's config class alternates sliding/full from layer 0 when the config.json has no layer_types
TINY_GEMMA2: dict[str, Any] = {
    "model_type": "gemma2",
    "architectures": ["Gemma2ForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_hidden_layers": 4,
    "vocab_size": 1000,
    "sliding_window": 32,
    "max_position_embeddings": 4096,
}
TINY_MLA: dict[str, Any] = {**FAMILIES["deepseek-v3-mla"], "architectures": ["DeepseekV3ForCausalLM"]}
REPOS = {"tiny/gemma2": TINY_GEMMA2, "tiny/mla": TINY_MLA}
# context 1,024 in blocks of 16; max_num_batched_tokens 64 (two batches in flight: 128 tokens)
QUERY = "context=1024&output_tokens=16&max_num_batched_tokens=64&max_num_seqs=8"


def fake_hub(request: httpx.Request) -> httpx.Response:
    parts = request.url.path.strip("/").split("/")
    if parts[:2] == ["api", "models"] and "/".join(parts[2:4]) in REPOS:
        return httpx.Response(200, json={"sha": HUB_SHA})
    if len(parts) == 5 and parts[2:5] == ["resolve", "main", "config.json"] and "/".join(parts[:2]) in REPOS:
        body = json.dumps(REPOS["/".join(parts[:2])]).encode()
        return httpx.Response(200, content=body, headers={"X-Repo-Commit": HUB_SHA})
    return httpx.Response(404, headers={"X-Error-Code": "RepoNotFound"})


@pytest.fixture
def hub_client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path), hub_transport=httpx.MockTransport(fake_hub), store=None)
    with TestClient(app) as client:
        yield client


def _terms(body: dict[str, Any]) -> dict[str, int]:
    return {t["term"]: t["bytes"] for t in body["breakdown"]}


def test_a_hub_gemma2_config_gives_its_alternating_sliding_layers(hub_client: TestClient) -> None:
    body = hub_client.get(f"/api/v1/inference?model=tiny/gemma2&{QUERY}").json()
    layout = body["layout"]
    assert layout["kinds"] == ["sliding", "full", "sliding", "full"] and layout["window"] == 32
    assert layout["source"] == f"Hub config.json of tiny/gemma2@{HUB_SHA[:12]}"
    # page: 16 tokens x (K + V: 2 x 2 heads x 16) x 2 bytes = 2,048 B; groups of 2 layers (2 full, 2 sliding):
    # full cdiv(1024, 16) = 64 blocks, sliding cdiv(min(31 + 128, 1024), 16) + 1 = 11; a block is 2 pages
    assert _terms(body)["kv_cache_bytes"] == (64 + 11) * 2 * 2048
    assert not any("full attention on every layer" in n for n in body["notes"])


def test_a_hub_deepseek_config_gives_mla_latents(hub_client: TestClient) -> None:
    body = hub_client.get(f"/api/v1/inference?model=tiny/mla&{QUERY}").json()
    assert body["layout"]["kv_lora_rank"] == 64 and body["layout"]["rope_dim"] == 16
    # one latent of 64 + 16 per token and layer, bf16, no x2: page 16 x 80 x 2 = 2,560 B; one group of 2 layers
    assert _terms(body)["kv_cache_bytes"] == 64 * 2 * 2560
    assert body["kv_bytes_per_token"] == 2 * 80 * 2


def test_an_uploaded_config_is_read_for_its_layout(hub_client: TestClient, tmp_path: Path) -> None:
    name = uploads.save(make_settings(tmp_path), TINY_GEMMA2)
    body = hub_client.get(f"/api/v1/inference?model={name}&{QUERY}").json()
    assert body["layout"]["kinds"] == ["sliding", "full", "sliding", "full"]
    assert body["layout"]["source"] == f"uploaded {name}"
    assert _terms(body)["kv_cache_bytes"] == (64 + 11) * 2 * 2048
    page = hub_client.get(f"/serve?model={name}&{QUERY}")
    assert page.status_code == 200 and page.context["est"].layout.window == 32  # type: ignore[attr-defined]


def test_a_hub_model_whose_config_is_not_kept_is_full_attention_with_a_note(tmp_path: Path) -> None:
    """Only the cached config the inventory was built from counts (its canonical hash is the spec's)."""
    from app.resolver import resolve_model_sync
    from app.serving.estimate import plan_serving
    from app.serving.plan import ServingPlan
    from app.serving.sources import layout_for

    settings = make_settings(tmp_path)
    spec = resolve_model_sync("tiny/gemma2", settings, transport=httpx.MockTransport(fake_hub))
    assert layout_for(spec, settings=settings).kinds == ("sliding", "full", "sliding", "full")
    moved = spec.model_copy(update={"config_hash": "0" * 64})  # e.g. the cache holds another commit's config
    layout = layout_for(moved, settings=settings)
    assert layout.kinds == ("full",) * 4 and layout.source.startswith("arch summary")
    est = plan_serving(moved, ServingPlan(context=1024), layout, tiers=())
    assert any("full attention on every layer" in n for n in est.notes)
