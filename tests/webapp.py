"""Shared pieces of the API and web tests: settings, an in-memory store, a mock Hub and the problem-shape helper."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.store.models import (
    AccuracyStats,
    ComparableStats,
    MeasurementRecord,
    checkpointing_of,
    layout_of,
    relative_error_pct,
    stack_of,
)
from app.store.query import MeasurementFacets, MeasurementPage, MeasurementQuery
from tests.configs import TINY_LLAMA as BASE_TINY_LLAMA

HUB = "https://hub.test"
HUB_SHA = "89abcdef0123456789abcdef0123456789abcdef"
TINY_LLAMA: dict[str, Any] = {
    **BASE_TINY_LLAMA,
    "architectures": ["LlamaForCausalLM"],
    "max_position_embeddings": 512,
}
PROBLEM_KEYS = {"type", "title", "status", "detail", "errors"}
UPLOAD_TOKEN = "s3cret-upload-token"


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem with exactly gpuplan's keys; returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert set(body) == PROBLEM_KEYS
    assert body["status"] == status
    assert body["type"].startswith("https://gpuplan.dev/problems/")
    if slug is not None:
        assert body["type"] == f"https://gpuplan.dev/problems/{slug}"
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in response.text
    assert all(set(e) == {"field", "message"} for e in body["errors"])
    return body


def make_record(**overrides: Any) -> MeasurementRecord:
    values: dict[str, Any] = {
        "created_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        "model_id": "meta-llama/Llama-2-7b-hf",
        "model_type": "llama",
        "device": "cuda",
        "device_name": "NVIDIA H200",
        "layers": 2,
        "plan": {"method": "qlora", "rank": 16},
        "config": {"model_type": "llama", "num_hidden_layers": 2},
        "measured_peak_bytes": 1_000_000_000,
        "measured_reserved_bytes": 1_100_000_000,
        "estimated_peak_bytes": 1_050_000_000,
        "env": {"torch": "2.13.0", "transformers": "5.0.0", "device_name": "NVIDIA H200"},
        "source": "gpu-h200",
    }
    values.update(overrides)
    return MeasurementRecord(**values)


class FakeStore:
    """An in-memory stand-in for app/store's store, with the interface the API codes against."""

    def __init__(self, records: list[MeasurementRecord] | None = None, accuracy: object = None) -> None:
        self.records: list[MeasurementRecord] = []
        self.list_calls: list[tuple[str | None, str | None, int]] = []
        self.page_calls: list[MeasurementQuery] = []
        self._accuracy = accuracy if accuracy is not None else {"overall": None, "by_device": {}, "by_split": {}}
        for record in records or []:
            self.add_measurement(record)

    def list_measurements(
        self,
        model: str | None,
        device: str | None,
        source: str | None = None,
        limit: int = 500,
        verified: bool | None = None,
    ) -> list[MeasurementRecord]:
        self.list_calls.append((model, device, limit))
        chosen = [
            r
            for r in self.records
            if (model is None or r.model_id == model)
            and (device in (None, r.device))
            and (source in (None, r.source))
            and (verified in (None, r.verified))
        ]
        return sorted(chosen, key=lambda r: r.created_at, reverse=True)[:limit]

    def _matching(self, query: MeasurementQuery) -> list[MeasurementRecord]:
        wanted = {k: v for k, v in query.model_dump(exclude={"sort", "offset", "limit"}).items() if v is not None}
        names = {"family": "model_type", "model": "model_id"}
        return [r for r in self.records if all(getattr(r, names.get(k, k)) == v for k, v in wanted.items())]

    def page_measurements(self, query: MeasurementQuery) -> MeasurementPage:
        keys = {
            "measured_at": lambda r: r.created_at,
            "model": lambda r: r.model_id,
            "family": lambda r: r.model_type,
            "method": lambda r: r.method or "",
            "error": lambda r: r.error_pct,
            "abs_error": lambda r: abs(r.error_pct),
            "estimated": lambda r: r.estimated_peak_bytes,
            "measured": lambda r: r.measured_peak_bytes,
        }
        self.page_calls.append(query)
        key = keys[query.sort.removeprefix("-")]
        chosen = sorted(self._matching(query), key=lambda r: -(r.id or 0))
        chosen = sorted(chosen, key=key, reverse=query.sort.startswith("-"))
        page = chosen[query.offset : query.offset + query.limit]
        return MeasurementPage(records=page, total=len(chosen), offset=query.offset, limit=query.limit)

    def chart_points(self, query: MeasurementQuery, limit: int) -> list[tuple[str, str, int, int]]:
        rows = self._matching(query)[:limit]
        return [(r.model_id, r.device, r.estimated_peak_bytes, r.measured_peak_bytes) for r in rows]

    def facets(self) -> MeasurementFacets:
        return MeasurementFacets(
            families=sorted({r.model_type for r in self.records}),
            methods=sorted({r.method for r in self.records if r.method}),
            sources=sorted({r.source for r in self.records}),
        )

    def add_measurement(self, record: MeasurementRecord) -> int:
        new_id = len(self.records) + 1
        self.records.append(record.model_copy(update={"id": new_id}))
        return new_id

    def accuracy(self) -> object:
        return self._accuracy

    def timed_runs(self, method: str, *, cached_only: bool = False) -> list[MeasurementRecord]:
        return [r for r in self.records if r.method == method and r.device == "cuda" and r.verified and r.timing]

    def comparable(
        self,
        model_type: str,
        method: str,
        device: str,
        *,
        checkpointing: str | None = None,
        gpus: int = 1,
        sharding: str = "none",
        stack: str = "transformers-5",
        cached_only: bool = False,  # in memory: every answer is at hand
    ) -> ComparableStats | None:
        same = [
            r
            for r in self.records
            if r.method == method
            and r.device == device
            and r.verified
            and layout_of(r.plan) == (gpus, sharding)
            and stack_of(r.plan) == stack
            and (checkpointing is None or checkpointing_of(r.plan) == checkpointing)
        ]
        typed = [r for r in same if r.model_type == model_type]
        chosen = typed or same
        if not chosen:
            return None
        stats = AccuracyStats.from_errors(
            [relative_error_pct(r.estimated_peak_bytes, r.measured_peak_bytes) for r in chosen]
        )
        scope = "model_type" if typed else "method"
        return ComparableStats(
            **stats.model_dump(),
            scope=scope,
            model_type=model_type if typed else None,
            method=method,
            device=device,  # type: ignore[arg-type]
            checkpointing=checkpointing,
            gpus=gpus,
            sharding=sharding,
            residuals=tuple(
                sorted((r.estimated_peak_bytes - r.measured_peak_bytes) / r.measured_peak_bytes for r in chosen)
            ),
            widened="as the fake store matched",
        )


def hub_handler(request: httpx.Request) -> httpx.Response:
    """A mock Hub: `tiny/llama` exists, `gated/*` needs a token, everything else is not found."""
    parts = request.url.path.strip("/").split("/")
    if parts[:2] == ["api", "models"]:
        repo = "/".join(parts[2:4])
        if repo == "tiny/llama":
            return httpx.Response(200, json={"sha": HUB_SHA, "safetensors": {"total": 123_456}})
    elif len(parts) == 5 and parts[2] == "resolve" and parts[4] == "config.json":
        repo = "/".join(parts[:2])
        if repo == "tiny/llama":
            return httpx.Response(200, content=json.dumps(TINY_LLAMA).encode(), headers={"X-Repo-Commit": HUB_SHA})
    else:
        repo = ""
    if repo.startswith("gated/"):
        return httpx.Response(401, headers={"X-Error-Code": "GatedRepo"})
    return httpx.Response(404, headers={"X-Error-Code": "RepoNotFound"})


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "hf_home": tmp_path / "hf-home",
        "hf_endpoint": HUB,
        "hf_token": None,
        "hf_hub_offline": False,
        "hub_retries": 0,
        "hub_timeout": 2.0,
        "upload_token": UPLOAD_TOKEN,
        "headroom": 0.10,
        "database_url": None,
        "trusted_hosts": ["testserver", "localhost", "127.0.0.1"],  # TestClient sends Host: testserver
    }
    values.update(overrides)
    return Settings(**values)


def build_app(tmp_path: Path, store: Any = None, **overrides: Any) -> FastAPI:
    return create_app(make_settings(tmp_path, **overrides), hub_transport=httpx.MockTransport(hub_handler), store=store)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    """The app without a store (calibration routes answer 503)."""
    return build_app(tmp_path)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def store_client(tmp_path: Path, store: FakeStore) -> Iterator[TestClient]:
    """A client of an app with the in-memory store."""
    with TestClient(build_app(tmp_path, store=store)) as test_client:
        yield test_client
