"""Reference routes: the model catalog, one resolved model, and the GPU tiers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from app.api.queries import query_dependency, query_parameters
from app.api.responses import HUB_PROBLEMS, problems
from app.catalog.search import CatalogModel, CatalogQuery, find_models
from app.core.gpus import GPU_TIERS, GpuTier
from app.http.deps import PlannerDep
from app.http.schemas import ModelSummary

router = APIRouter(tags=["reference"])

_PART = Path(min_length=1, max_length=96, pattern=r"^[A-Za-z0-9._-]+$")


CatalogQueryDep = Annotated[CatalogQuery, Depends(query_dependency(CatalogQuery))]


@router.get("/models", responses=problems(), openapi_extra={"parameters": query_parameters(CatalogQuery)})
async def list_models(query: CatalogQueryDep) -> list[CatalogModel]:
    """The bundled catalog (estimated offline): filter by text, family, size, MoE and release month."""
    return find_models(query)


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
