"""The reliability suite: every reproduction of issue 12 replayed against a real app, loopback only, bounded.

Apps here run with a real SQLite store in a temporary folder and, where a test needs the Hub, the loopback
fake Hub of tests/hub (misbehaving on demand). Every loop and wait is bounded; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.store import Store
from tests.hub.conftest import FakeHub, _no_ambient_hub_env, fake_hub
from tests.webapp import UPLOAD_TOKEN, hub_handler
from tests.webapp import make_settings as web_settings

__all__ = ["AUTH", "FakeHub", "_no_ambient_hub_env", "fake_hub"]

AUTH = {"Authorization": f"Bearer {UPLOAD_TOKEN}"}


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{(tmp_path / 'store.sqlite3').as_posix()}") as store:
        yield store


@pytest.fixture
def make_app(tmp_path: Path, sqlite_store: Store) -> Callable[..., FastAPI]:
    """An app on the real SQLite store and the mock Hub of tests/webapp (or `hub_url`); overrides are settings."""

    def make(hub_url: str | None = None, **overrides: Any) -> FastAPI:
        settings = web_settings(tmp_path, **({"hf_endpoint": hub_url} if hub_url else {}), **overrides)
        transport = None if hub_url else httpx.MockTransport(hub_handler)
        return create_app(settings, hub_transport=transport, store=sqlite_store)

    return make


@pytest.fixture
def client(make_app: Callable[..., FastAPI]) -> Iterator[TestClient]:
    with TestClient(make_app()) as test_client:
        yield test_client


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return web_settings(tmp_path, **overrides)

    return make
