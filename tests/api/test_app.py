"""The app factory: nothing at import time, the lifespan owns the Hub client, OpenAPI documents every route."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from app.hub.client import HubClient
from tests.webapp import build_app

ROOT = Path(__file__).resolve().parents[2]


def test_importing_app_main_builds_nothing() -> None:
    code = (
        "import sys, app.main, app.api, app.web.routes, app.service\n"
        "from app.settings import get_settings\n"
        "assert get_settings.cache_info().currsize == 0, 'settings read at import'\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_the_lifespan_opens_and_closes_the_hub_client(tmp_path: Path) -> None:
    app = build_app(tmp_path)
    assert not hasattr(app.state, "hub")
    with TestClient(app) as client:
        hub = client.app.state.hub  # type: ignore[attr-defined]
        assert isinstance(hub, HubClient)
        assert client.get("/api/v1/models/nobody/nothing").status_code == 404  # the client was used
        assert hub._client is not None
    assert hub._client is None  # closed on shutdown


def test_two_apps_do_not_share_state(tmp_path: Path) -> None:
    first, second = build_app(tmp_path / "a", headroom=0.5), build_app(tmp_path / "b")
    with TestClient(first) as a, TestClient(second) as b:
        a.get("/healthz")
        assert 'route="/healthz"' in a.get("/metrics").text
        assert 'route="/healthz"' not in b.get("/metrics").text
        assert a.get("/api/v1/estimate?model=meta-llama/Llama-2-7b-hf").json()["recommendations"]["headroom"] == 0.5


def test_openapi_documents_every_route_with_a_one_line_summary(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        "/api/v1/estimate": {"get", "post"},
        "/api/v1/estimate/from-config": {"post"},
        "/api/v1/fit": {"get"},
        "/api/v1/models": {"get"},
        "/api/v1/models/{org}/{name}": {"get"},
        "/api/v1/gpus": {"get"},
        "/api/v1/calibrations": {"get", "post"},
        "/api/v1/accuracy": {"get"},
        "/api/v1/inference": {"get", "post"},
        "/api/v1/compare": {"get", "post"},
        "/api/v1/report": {"get"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
    }
    assert {p: set(ops) for p, ops in paths.items()} == expected
    for ops in paths.values():
        for op in ops.values():
            assert op["description"] and "\n" not in op["description"].strip()
    params = {p["name"] for p in paths["/api/v1/estimate"]["get"]["parameters"]}
    assert {"model", "format", "seq_len", "batch_size", "rank", "targets", "gpus"} <= params
    assert "image/svg+xml" in paths["/api/v1/estimate"]["get"]["responses"]["200"]["content"]
    assert "application/problem+json" in paths["/api/v1/estimate"]["get"]["responses"]["422"]["content"]
    assert client.get("/docs").status_code == 200


def test_module_sizes_stay_small() -> None:
    for folder in ("app/api", "app/web"):
        for path in (ROOT / folder).glob("*.py"):
            assert len(path.read_text().splitlines()) < 500, path
    for path in (ROOT / "app/main.py", ROOT / "app/service.py", ROOT / "app/core/fit.py"):
        assert len(path.read_text().splitlines()) < 500, path


def test_query_parameters_are_documented_as_the_query_spells_them(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    params = {p["name"]: p for p in spec["paths"]["/api/v1/estimate"]["get"]["parameters"]}
    assert params["targets"]["schema"]["type"] == "string" and "comma-separated" in params["targets"]["description"]
    assert params["model"]["required"] is True and params["rank"]["required"] is False
    assert params["seq_len"]["schema"] == {
        "type": "integer",
        "default": 2048,
        "minimum": 1,
        "maximum": 1048576,
        "description": "Tokens per sequence.",
    }
    assert params["quant"]["schema"]["enum"] == ["nf4", "fp4", "int8", "none"]  # no null in a query string
    fit = {p["name"] for p in spec["paths"]["/api/v1/fit"]["get"]["parameters"]}
    assert "gpu" in fit and "format" not in fit
