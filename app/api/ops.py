"""Operational routes: liveness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from app.http.deps import MetricsDep
from app.http.metrics import CONTENT_TYPE
from app.http.schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health()


@router.get("/metrics", response_class=PlainTextResponse, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(registry: MetricsDep) -> PlainTextResponse:
    """Request counts and latencies by route, estimates computed and Hub fetch outcomes (Prometheus text)."""
    return PlainTextResponse(registry.render(), media_type=CONTENT_TYPE)
