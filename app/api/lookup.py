"""Reference routes: the model catalog, one resolved model, and the GPU tiers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app import catalog
from app.api.responses import HUB_PROBLEMS, problems
from app.core.gpus import GPU_TIERS, GpuTier
from app.http.deps import PlannerDep
from app.http.schemas import ModelRow, ModelSummary

router = APIRouter(tags=["reference"])

_PART = Path(min_length=1, max_length=96, pattern=r"^[A-Za-z0-9._-]+$")


def catalog_rows(q: str | None = None) -> list[ModelRow]:
    """Catalog models whose id, model_type or architecture contains `q` (case-insensitive)."""
    needle = (q or "").strip().lower()
    rows = []
    for model_id in catalog.catalog_ids():
        spec = catalog.load_spec(model_id)
        if spec is None:  # pragma: no cover - every catalog id has a shipped inventory (tests/core)
            continue
        row = ModelRow.of(spec)
        if needle in f"{row.id} {row.model_type} {row.architecture}".lower():
            rows.append(row)
    return rows


@router.get("/models", responses=problems())
async def list_models(
    q: Annotated[
        str | None, Query(max_length=100, description="Filter: part of the id, model_type or architecture.")
    ] = None,
) -> list[ModelRow]:
    """The bundled catalog of models (estimated offline, without the Hub)."""
    return catalog_rows(q)


@router.get("/models/{org}/{name}", responses=HUB_PROBLEMS)
async def get_model(
    org: Annotated[str, _PART],
    name: Annotated[str, _PART],
    planner: PlannerDep,
    revision: Annotated[
        str | None, Query(min_length=1, max_length=200, description="Branch, tag or commit sha (Hub models).")
    ] = None,
) -> ModelSummary:
    """One model resolved: from the catalog, else its config.json from the Hub."""
    ref = f"{org}/{name}" + (f"@{revision}" if revision else "")
    return ModelSummary.of(await planner.resolve(ref))


@router.get("/gpus", responses=problems())
async def list_gpus() -> list[GpuTier]:
    """GPU tiers and the memory a process can address on each."""
    return list(GPU_TIERS)
