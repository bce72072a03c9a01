"""Routes that answer with numbers: POST/GET /estimate (with exports) and GET /fit (inverse planning)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from app.api.queries import query_dependency, query_parameters
from app.api.responses import ESTIMATE_OK, HUB_PROBLEMS, problems
from app.core.fit import FitResult
from app.core.gpus import GPU_TIERS, find_tier
from app.core.throughput import RunSize
from app.errors import InputError, PlanError
from app.http.band import AnswerOptions, banded
from app.http.deps import MeasurementStore, OptionalStoreDep, PlannerDep
from app.http.reports import reports_of
from app.http.schemas import EstimateQuery, EstimateRequest, FitQuery
from app.plan_input import as_text
from app.service import MEDIA_TYPES, ExportFormat, Planned, Planner

router = APIRouter(tags=["estimate"])

RUN_FIELDS = frozenset(RunSize.model_fields)  # train_tokens, epochs: what the time and cost are for
ANSWER_FIELDS = frozenset(AnswerOptions.model_fields)  # safe: judge the fit on the band's upper end
EstimateQueryDep = Annotated[EstimateQuery, Depends(query_dependency(EstimateQuery, ignore=RUN_FIELDS | ANSWER_FIELDS))]
RunQueryDep = Annotated[RunSize, Depends(query_dependency(RunSize, only=RUN_FIELDS))]
AnswerDep = Annotated[AnswerOptions, Depends(query_dependency(AnswerOptions, only=ANSWER_FIELDS))]
FitQueryDep = Annotated[FitQuery, Depends(query_dependency(FitQuery))]


async def export_response(
    planner: Planner, store: MeasurementStore | None, planned: Planned, fmt: ExportFormat, answer: AnswerOptions
) -> Response:
    """The export; JSON and Markdown carry the uncertainty band (or why none) and the verdict as judged."""
    found = await banded(planner, store, planned, answer.safe)
    band = found.band if fmt in ("json", "md") else None
    return Response(found.planned.export(fmt, band), media_type=MEDIA_TYPES[fmt])


@router.post(
    "/estimate",
    response_model=None,
    responses={**ESTIMATE_OK, **HUB_PROBLEMS, **problems(413, 501)},
    openapi_extra={"parameters": query_parameters(RunSize) + query_parameters(AnswerOptions)},
)
async def post_estimate(
    body: EstimateRequest,
    planner: PlannerDep,
    store: OptionalStoreDep,
    run: RunQueryDep,
    answer: AnswerDep,
    request: Request,
    format: Annotated[ExportFormat | Literal["pdf"], Query(description="json, md, csv, svg or pdf.")] = "json",
) -> Response:
    """Estimate the peak GPU memory of one fine-tuning step of a model and plan given as JSON."""
    if format == "pdf":  # the result page of this model and plan, printed (app/web/pdf.py)
        plan = [(k, as_text(v)) for k, v in body.to_plan().model_dump().items()]
        query = urlencode([("model", body.model), *plan, *run.model_dump().items()])
        return await reports_of(request).result_pdf(request, query)
    model = await planner.resolve(body.model)
    planned = await planner.plan_async(model, body.to_plan(), run)
    return await export_response(planner, store, planned, format, answer)


@router.get(
    "/estimate",
    response_model=None,
    responses={**ESTIMATE_OK, **HUB_PROBLEMS, **problems(501)},
    openapi_extra={
        "parameters": query_parameters(EstimateQuery) + query_parameters(RunSize) + query_parameters(AnswerOptions)
    },
)
async def get_estimate(
    query: EstimateQueryDep,
    run: RunQueryDep,
    answer: AnswerDep,
    planner: PlannerDep,
    store: OptionalStoreDep,
    request: Request,
) -> Response:
    """Estimate the peak GPU memory of one fine-tuning step; plan fields as query parameters."""
    if query.format == "pdf":  # the result page, printed (app/web/pdf.py)
        return await reports_of(request).result_pdf(request)
    model = await planner.resolve(query.model)
    planned = await planner.plan_async(model, query.to_plan(), run)
    return await export_response(planner, store, planned, query.format, answer)


@router.get("/fit", responses=HUB_PROBLEMS, openapi_extra={"parameters": query_parameters(FitQuery)})
async def get_fit(query: FitQueryDep, planner: PlannerDep) -> FitResult:
    """The largest micro-batch, sequence length and LoRA rank of the plan that fit a GPU tier."""
    tier = find_tier(query.gpu)
    if tier is None:
        names = ", ".join(t.name for t in GPU_TIERS)
        message = f"unknown GPU tier {query.gpu!r}; known tiers: {names}"
        raise InputError(f"gpu: {message}", errors=[{"field": "gpu", "message": message}])
    plan = query.to_plan()
    if plan.device != "cuda":
        message = "fitting a GPU tier needs device cuda"
        raise PlanError(f"device: {message}", errors=[{"field": "device", "message": message}])
    model = await planner.resolve(query.model)
    return await planner.fit(model, plan, tier)
