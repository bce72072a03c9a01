"""Operational routes: liveness, readiness (inventory build saturation) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from app.api.responses import problems
from app.errors import Overloaded
from app.http.deps import MetricsDep
from app.http.metrics import CONTENT_TYPE
from app.http.schemas import BuildSlots, Health, Readiness
from app.inventory.pool import BuildPool

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> Health:
    """Liveness: the process answers (HEAD too)."""
    return Health()


@router.get("/readyz", responses=problems(503))
async def readyz(request: Request) -> Readiness:
    """Readiness: 503 while every inventory build slot is busy, so a load balancer sends new work elsewhere."""
    builds: BuildPool | None = getattr(request.app.state, "builds", None)
    stats = builds.stats() if builds is not None else None
    slots = BuildSlots(
        workers=stats.workers if stats else 0,
        queue=stats.queue if stats else 0,
        running=stats.running if stats else 0,
        waiting=stats.waiting if stats else 0,
    )
    if stats is not None and stats.saturated:
        raise Overloaded(
            f"saturated: every inventory build slot is busy ({stats.running} building, {stats.waiting} waiting "
            f"of {stats.workers} workers and a queue of {stats.queue})"
        )
    return Readiness(inventory_builds=slots)


@router.get("/metrics", response_class=PlainTextResponse, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(registry: MetricsDep) -> PlainTextResponse:
    """Request counts and latencies by route, estimates computed and Hub fetch outcomes (Prometheus text)."""
    return PlainTextResponse(registry.render(), media_type=CONTENT_TYPE)
