"""Calibration routes over the measurement store: list and upload measured runs, and the accuracy summary."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field, field_validator
from starlette.concurrency import run_in_threadpool

from app.api.responses import problems
from app.http.deps import StoreDep, UploadAuthDep
from app.http.schemas import Created, jsonable_accuracy
from app.store.models import MeasurementRecord, StoreDevice

router = APIRouter(tags=["calibration"])

MAX_LIST = 1000


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


@router.get("/calibrations", responses=problems(503))
async def list_calibrations(
    store: StoreDep,
    model: Annotated[str | None, Query(min_length=1, max_length=200, description="Only runs of this model id.")] = None,
    device: Annotated[StoreDevice | None, Query(description="Only runs on this device.")] = None,
    source: Annotated[str | None, Query(min_length=1, max_length=64, description="Only runs of this source.")] = None,
    verified: Annotated[bool | None, Query(description="Only verified (true) or unverified (false) runs.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST, description="At most this many runs, newest first.")] = 100,
) -> list[MeasurementRecord]:
    """Measured fine-tuning runs next to what gpuplan estimated for them, with their source and verification."""
    records = await run_in_threadpool(
        store.list_measurements, model=model, device=device, source=source, verified=verified, limit=limit
    )
    return list(records)


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
