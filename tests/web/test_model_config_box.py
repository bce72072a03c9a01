"""The planner's "give its config.json" box: a model config pasted or uploaded answers without the Hub."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import uploads
from app.errors import MalformedConfig
from app.settings import Settings
from tests.webapp import TINY_LLAMA, assert_problem, build_app


def test_a_pasted_config_gets_a_permalink_result_page(client: TestClient) -> None:
    posted = client.post("/plan/config", data={"config_json": json.dumps(TINY_LLAMA)}, follow_redirects=False)
    assert posted.status_code == 303
    location = posted.headers["location"]
    name = re.fullmatch(r"/plan\?model=(config%3A[0-9a-f]{16})", location)
    assert name is not None
    page = client.get(location)
    assert page.status_code == 200 and page.template.name == "plan.html"  # type: ignore[attr-defined]
    assert page.context["est"].peak_allocated_bytes > 0  # type: ignore[attr-defined]
    # the same file uploaded is the same model; the plan can change as for any model
    uploaded = client.post(
        "/plan/config",
        files=[("config_json_file", ("config.json", json.dumps(TINY_LLAMA, indent=2).encode()))],
        follow_redirects=False,
    )
    assert uploaded.headers["location"] == location
    other = client.get(location + "&rank=64")
    assert other.status_code == 200 and other.context["est"].plan.rank == 64  # type: ignore[attr-defined]
    api = client.get("/api/v1/estimate", params={"model": name.group(1).replace("%3A", ":")})
    assert api.status_code == 200 and api.json()["model"]["source"] == "file"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "or choose the file"),
        ("[1, 2]", "must hold a JSON object"),
        ("{not json", "is not valid JSON"),
        ('{"learning_rate": 2e-4}', "has no model_type"),
    ],
)
def test_what_is_not_a_model_config_is_a_422_that_says_why(client: TestClient, text: str, says: str) -> None:
    page = client.post("/plan/config", data={"config_json": text}, follow_redirects=False)
    assert page.status_code == 422 and html.escape(says) in page.text


def test_the_inventory_caps_apply_to_an_uploaded_config(client: TestClient) -> None:
    huge = {**TINY_LLAMA, "num_hidden_layers": 100_000}
    page = client.post("/plan/config", data={"config_json": json.dumps(huge)}, follow_redirects=False)
    assert page.status_code == 422 and "num_hidden_layers" in page.text


def test_the_size_limit_is_the_local_config_limit() -> None:
    with pytest.raises(MalformedConfig, match="larger than 10 bytes"):
        uploads.parse_config(b'{"model_type": "llama"}', "config.json", 10)


def test_a_name_this_server_does_not_hold_says_to_give_the_file_again(client: TestClient) -> None:
    problem = assert_problem(client.get("/api/v1/estimate", params={"model": "config:0123456789abcdef"}), 422)
    assert "give the model's config.json again" in problem["detail"]
    assert problem["errors"][0]["field"] == "model"


def test_hf_hub_offline_is_the_setting_the_hint_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert Settings(data_dir=tmp_path).hf_hub_offline is True
    with TestClient(build_app(tmp_path, hf_hub_offline=True)) as offline:
        assert offline.get("/api/v1/estimate", params={"model": "meta-llama/Llama-2-7b-hf"}).status_code == 200
        assert_problem(offline.get("/api/v1/estimate", params={"model": "acme/not-cached"}), 404)


def test_a_config_past_the_body_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    with TestClient(build_app(tmp_path, max_body_bytes=4096)) as small:
        padded = json.dumps({**TINY_LLAMA, "padding": "x" * 8192})
        page = small.post("/plan/config", files=[("config_json_file", ("config.json", padded.encode()))])
        assert page.status_code == 413 and "GPUPLAN_MAX_BODY_BYTES" in page.text
