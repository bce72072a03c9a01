"""Calibration routes over the measurement store: list and upload measured runs, and the accuracy summary."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URL

from app.api.queries import query_dependency, query_parameters
from app.api.responses import problems
from app.http.deps import StoreDep, UploadAuthDep
from app.http.schemas import Created, jsonable_accuracy
from app.store.models import MeasurementRecord
from app.store.query import MeasurementPage, MeasurementQuery

router = APIRouter(tags=["calibration"])


class MeasurementUpload(MeasurementRecord):
    """One measured run as an uploader sends it: unverified until an operator accepts its source."""

    verified: Literal[False] = Field(
        False,
        description="Uploads are never verified on arrival: `gpuplan accept-calibrations --source X` does that.",
    )

    @field_validator("verified", mode="before")
    @classmethod
    def _a_boolean(cls, value: object) -> object:
        if not isinstance(value, bool):  # Literal[False] alone would take 0
            raise ValueError("verified must be false (a JSON boolean): an operator verifies uploads")
        return value


CalibrationQueryDep = Annotated[MeasurementQuery, Depends(query_dependency(MeasurementQuery))]


def page_links(url: URL, page: MeasurementPage) -> str:
    """RFC 8288 `Link` header value: the next and previous pages of the same query (empty on a single page).

    The targets are relative references (path and query), so the Host header is never reflected.
    """
    links = []
    for rel, offset in (("next", page.next_offset), ("prev", page.prev_offset)):
        if offset is not None:
            moved = url.include_query_params(offset=offset, limit=page.limit)
            links.append(f'<{moved.path}?{moved.query}>; rel="{rel}"')
    return ", ".join(links)


@router.get(
    "/calibrations",
    responses=problems(503),
    openapi_extra={"parameters": query_parameters(MeasurementQuery)},
)
async def list_calibrations(
    request: Request, response: Response, store: StoreDep, query: CalibrationQueryDep
) -> list[MeasurementRecord]:
    """Measured runs next to their estimates, filtered, sorted and paged (X-Total-Count, Link next/prev)."""
    page = await run_in_threadpool(store.page_measurements, query)
    response.headers["X-Total-Count"] = str(page.total)
    if links := page_links(request.url, page):
        response.headers["Link"] = links
    return page.records


@router.post("/calibrations", status_code=201, responses=problems(400, 401, 403, 413, 503))
async def add_calibration(_auth: UploadAuthDep, record: MeasurementUpload, store: StoreDep) -> Created:
    """Upload one measured run (bearer token GPUPLAN_UPLOAD_TOKEN); it stays unverified until accepted."""
    stored = MeasurementRecord.model_validate(record.model_dump(exclude={"id", "error_pct"}) | {"verified": False})
    new_id = await run_in_threadpool(store.add_measurement, stored)
    return Created(id=new_id)


@router.get("/accuracy", responses=problems(503))
async def get_accuracy(store: StoreDep) -> dict[str, Any]:
    """How far gpuplan's estimates were from the measured peaks: verified runs, then unverified and per source."""
    return jsonable_accuracy(await run_in_threadpool(store.accuracy))
