"""GET /report: one procurement report, the training plan and the serving plan side by side (JSON, Markdown, PDF)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.api.responses import HUB_PROBLEMS, problems
from app.errors import InputError
from app.http.deps import PlannerDep
from app.http.reports import reports_of
from app.procurement import report
from app.procurement.build import build_async
from app.procurement.halves import parse_report

router = APIRouter(tags=["report"])

ReportFormat = Literal["json", "md", "pdf"]
QUERY_KEYS = frozenset({"train", "serve", "serve_months", "format"})
_TEXT = {"schema": {"type": "string"}}
REPORT_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The report: JSON by default; Markdown or the printed report page (PDF) with `format`.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/markdown": _TEXT,
            "application/pdf": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
TRAIN_EXAMPLE = "model=meta-llama/Llama-3.1-8B&method=qlora&train_tokens=100000000"
SERVE_EXAMPLE = "model=meta-llama/Llama-3.1-8B&engine=vllm&context=8192&concurrency=16&adapters=1"
TrainQuery = Annotated[
    str | None,
    Query(
        max_length=2000,
        description="The training plan as a query string of its own (URL-encoded): model, optional gpu, the fields "
        "of /estimate, train_tokens and epochs.",
        examples=[TRAIN_EXAMPLE],
    ),
]
ServeQuery = Annotated[
    str | None,
    Query(
        max_length=2000,
        description="The serving plan as a query string of its own (URL-encoded): model and the fields of /inference.",
        examples=[SERVE_EXAMPLE],
    ),
]

MonthsQuery = Annotated[
    str | None,
    Query(
        max_length=20,
        description="The 30-day months of serving to price (default 1, over 0 and at most 120): the serving GPUs' "
        "on-demand cost per hour, per month and for these months.",
        examples=["12"],
    ),
]


def _known_query(request: Request) -> None:
    unknown = sorted({k for k in request.query_params if k not in QUERY_KEYS})
    if unknown:
        message = (
            "unknown query parameter; give train=<its query string>, serve=<its query string>, serve_months and format"
        )
        errors = [{"field": k, "message": message} for k in unknown]
        raise InputError(f"{unknown[0]}: {message}", errors=errors)


@router.get("/report", response_model=None, responses={**REPORT_OK, **HUB_PROBLEMS, **problems(501)})
async def get_report(
    request: Request,
    planner: PlannerDep,
    train: TrainQuery = None,
    serve: ServeQuery = None,
    serve_months: MonthsQuery = None,
    format: Annotated[ReportFormat, Query(description="json, md or pdf.")] = "json",
) -> Response:
    """A procurement report: the training and the serving plan, each half's GPUs, and the GPUs to buy in all."""
    _known_query(request)
    proc = await build_async(parse_report(train, serve, serve_months), planner)
    if format == "pdf":
        return await reports_of(request).procurement_pdf(request, proc)
    if format == "md":
        return Response(report.markdown(proc), media_type="text/markdown; charset=utf-8")
    return Response(json.dumps(report.payload(proc), separators=(",", ":")), media_type="application/json")
