"""GET/POST /compare: 2 to 6 plans side by side (JSON, Markdown, a shared-scale SVG chart, or the page as PDF)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.queries import query_dependency, query_parameters
from app.api.responses import HUB_PROBLEMS, problems
from app.compare import report
from app.compare.compare import Comparison, compare_with
from app.compare.entries import MAX_PLANS, MIN_PLANS, parse_entries
from app.compare.svg import comparison_chart
from app.core.throughput import RunSize
from app.errors import InputError
from app.http.deps import PlannerDep
from app.http.reports import reports_of

router = APIRouter(tags=["compare"])

CompareFormat = Literal["json", "md", "svg", "pdf"]
MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "md": "text/markdown; charset=utf-8",
    "svg": "image/svg+xml",
}
RUN_FIELDS = frozenset(RunSize.model_fields)
QUERY_KEYS = frozenset({"plan", "format", *RUN_FIELDS})
RunQueryDep = Annotated[RunSize, Depends(query_dependency(RunSize, only=RUN_FIELDS))]
FormatQuery = Annotated[CompareFormat, Query(description="json, md, svg (one scale for every plan) or pdf.")]
PLAN_EXAMPLES = [
    "model=meta-llama/Llama-3.1-8B&method=qlora&gpu=RTX 4090",
    {"model": "meta-llama/Llama-3.1-8B", "method": "lora", "gpu": "A100 80GB"},
    {"model": "meta-llama/Llama-3.1-8B", "method": "full", "optimizer": "adamw", "gpus": 8, "sharding": "zero3"},
]


class CompareRequest(BaseModel):
    """The plans to compare: each an object of `model`, optional `gpu` (a tier to judge it on) and plan fields, or
    the same as a query string."""

    model_config = ConfigDict(extra="forbid")

    plans: list[dict[str, Any] | str] = Field(
        description=f"{MIN_PLANS} to {MAX_PLANS} plans; each takes /estimate's fields, plus `gpu`.",
        examples=[PLAN_EXAMPLES],
    )


_TEXT = {"schema": {"type": "string"}}
COMPARE_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The comparison: JSON by default; Markdown, an SVG chart or a PDF report with `format`.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/markdown": _TEXT,
            "image/svg+xml": _TEXT,
            "application/pdf": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
PLAN_PARAMETER = {
    "name": "plan",
    "in": "query",
    "required": True,
    "description": f"Repeat {MIN_PLANS} to {MAX_PLANS} times: one plan as a query string of its own (URL-encoded), "
    "e.g. `model=meta-llama/Llama-3.1-8B&method=lora&gpu=A100 80GB`.",
    "schema": {"type": "array", "items": {"type": "string"}, "minItems": MIN_PLANS, "maxItems": MAX_PLANS},
    "style": "form",
    "explode": True,
}


async def render(request: Request, comparison: Comparison, fmt: CompareFormat) -> Response:
    if fmt == "pdf":
        return await reports_of(request).comparison_pdf(request, comparison)
    if fmt == "md":
        text = report.markdown(comparison)
    elif fmt == "svg":
        text = comparison_chart(comparison, standalone=True)
    else:
        text = json.dumps(report.payload(comparison), separators=(",", ":"))
    return Response(text, media_type=MEDIA_TYPES[fmt])


def _known_query(request: Request) -> None:
    unknown = sorted({k for k in request.query_params if k not in QUERY_KEYS})
    if unknown:
        message = (
            "unknown query parameter; give each plan as plan=<its query string>, plus format, train_tokens, epochs"
        )
        errors = [{"field": k, "message": message} for k in unknown]
        raise InputError(f"{unknown[0]}: {message}", errors=errors)


@router.get(
    "/compare",
    response_model=None,
    responses={**COMPARE_OK, **HUB_PROBLEMS, **problems(501)},
    openapi_extra={"parameters": [PLAN_PARAMETER, *query_parameters(RunSize)]},
)
async def get_compare(
    request: Request, planner: PlannerDep, run: RunQueryDep, format: FormatQuery = "json"
) -> Response:
    """Compare 2 to 6 plans (repeated `plan=`) on one scale: each headline, the GPUs it needs and its cost."""
    _known_query(request)
    entries = parse_entries(request.query_params.getlist("plan"))
    return await render(request, await compare_with(planner, entries, run), format)


@router.post(
    "/compare",
    response_model=None,
    responses={**COMPARE_OK, **HUB_PROBLEMS, **problems(413, 501)},
    openapi_extra={"parameters": query_parameters(RunSize)},
)
async def post_compare(
    body: CompareRequest, request: Request, planner: PlannerDep, run: RunQueryDep, format: FormatQuery = "json"
) -> Response:
    """Compare 2 to 6 plans given as JSON (objects of /estimate's fields plus `gpu`, or query strings)."""
    entries = parse_entries(body.plans, strict=True, field="plans")
    return await render(request, await compare_with(planner, entries, run), format)
