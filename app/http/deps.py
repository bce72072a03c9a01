"""Dependencies of the routes as Annotated aliases: settings, Hub client, store, planner, metrics, upload auth.

All are `async def`: FastAPI runs a plain `def` dependency in a worker thread, a cost on every request.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Annotated, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import AuthError, StoreNotConfigured, UploadForbidden
from app.http.metrics import Metrics
from app.hub.client import HubClient
from app.service import Planner
from app.settings import Settings
from app.store.models import ComparableStats, MeasurementRecord
from app.store.query import MeasurementFacets, MeasurementPage, MeasurementQuery


class MeasurementStore(Protocol):
    """What the API needs from the measurement store (implemented in app/store/)."""

    def list_measurements(
        self,
        model: str | None,
        device: str | None,
        source: str | None = None,
        limit: int = 500,
        verified: bool | None = None,
    ) -> Sequence[MeasurementRecord]: ...

    def page_measurements(self, query: MeasurementQuery) -> MeasurementPage: ...

    def chart_points(self, query: MeasurementQuery, limit: int) -> list[tuple[str, str, int, int]]: ...

    def facets(self) -> MeasurementFacets: ...

    def add_measurement(self, record: MeasurementRecord) -> int: ...

    def accuracy(self) -> object: ...

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
        cached_only: bool = False,
    ) -> ComparableStats | None: ...

    def timed_runs(self, method: str, *, cached_only: bool = False) -> Sequence[MeasurementRecord]: ...


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _hub(request: Request) -> HubClient:
    hub: HubClient = request.app.state.hub
    return hub


async def _planner(request: Request) -> Planner:
    planner: Planner = request.app.state.planner
    return planner


async def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def optional_store(request: Request) -> MeasurementStore | None:
    store: MeasurementStore | None = getattr(request.app.state, "store", None)
    return store


async def _store(request: Request) -> MeasurementStore:
    store = await optional_store(request)
    if store is None:
        raise StoreNotConfigured(
            "this server runs without a measurement store: calibration data cannot be read or uploaded here"
        )
    return store


SettingsDep = Annotated[Settings, Depends(_settings)]
HubDep = Annotated[HubClient, Depends(_hub)]
PlannerDep = Annotated[Planner, Depends(_planner)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
StoreDep = Annotated[MeasurementStore, Depends(_store)]
OptionalStoreDep = Annotated[MeasurementStore | None, Depends(optional_store)]

_bearer = HTTPBearer(auto_error=False, description="GPUPLAN_UPLOAD_TOKEN, as `Authorization: Bearer <token>`.")


async def require_upload_token(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """401 without a bearer token, 403 with a wrong one or when uploads are disabled (no token configured)."""
    expected = settings.upload_token
    if not expected:
        raise UploadForbidden("uploads are disabled on this server: it has no GPUPLAN_UPLOAD_TOKEN set")
    if credentials is None or not credentials.credentials:
        raise AuthError("send the upload token as `Authorization: Bearer <token>`")
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise UploadForbidden("the bearer token is not this server's upload token")


UploadAuthDep = Annotated[None, Depends(require_upload_token)]
