"""The procurement report page `/report?train=...&serve=...` (the URL is the permalink), its Markdown and PDF."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from app.errors import InputError
from app.exports import report as training_report
from app.exports.stack import stack_versions
from app.http import API_PREFIX
from app.http.deps import PlannerDep
from app.http.reports import reports_of
from app.procurement import report
from app.procurement.build import Procurement, ServingHalf, TrainingHalf, build_async
from app.procurement.halves import parse_report
from app.procurement.purchase import purchase
from app.serving import report as serving_report

router = APIRouter(include_in_schema=False)

EXPORTS = (("Markdown", "md"), ("JSON", "json"), ("PDF", "pdf"))
PAGE_FORMATS = ("html", "md", "pdf")
REPORT_KEYS = frozenset({"train", "serve", "serve_months", "format"})


def report_context(proc: Procurement) -> dict[str, Any]:
    """What report.html shows (its PDF prints the same): the purchase, each half's headline, terms and stack."""
    query = urlencode(proc.query())
    api = f"{API_PREFIX}/report?{query}"
    context: dict[str, Any] = {
        "proc": proc,
        "purchase": purchase(proc),
        "permalink": report.permalink(proc),
        "exports": [(label, f"{api}&format={fmt}") for label, fmt in EXPORTS],
        "train": proc.train,
        "serve": proc.serve,
        "stack": stack_versions(),
        "add_training_link": "",  # a serving half's context sets it (the template reads it whatever the halves)
    }
    if proc.train is not None:
        est = proc.train.planned.estimate
        rec = proc.train.planned.recommendation
        context["train_plan_line"] = training_report.plan_line(est)
        context["time_model"] = training_report.time_model_text(rec) if rec is not None else ""
        context["train_link"] = "/plan?" + proc.train.ask.query()
    if proc.serve is not None:
        context |= serving_context(proc.serve, proc.train)
    return context


def serving_context(half: ServingHalf, train: TrainingHalf | None) -> dict[str, Any]:
    """The serving half's lines and links: its result page keeps the training plan (`train=`) so that its own
    report link comes back to this report; without a training half, where to plan one."""
    carried = [("train", train.ask.query())] if train is not None else []
    return {
        "serve_plan_line": serving_report.plan_line(half.estimate),
        "serve_stack": report.serving_stack(half),
        "serve_cost_line": report.serving_cost_line(half),
        "tier_month": lambda gpu: report.tier_month(half, gpu),
        "serve_link": "/serve?" + urlencode([*half.ask.pairs(), *carried]),
        "add_training_link": "/plan?" + urlencode([("model", half.model.id)]) if train is None else "",
    }


def _templates(request: Request) -> Jinja2Templates:
    templates: Jinja2Templates = request.app.state.templates
    return templates


def render_report(request: Request | None, proc: Procurement, templates: Jinja2Templates) -> str:
    """The report page's HTML (the PDF export prints it)."""
    return templates.get_template("report.html").render({"request": request, **report_context(proc)})


def _known(request: Request) -> str:
    """The page's format (html, md or pdf); unknown query keys are refused, naming what the page takes."""
    unknown = sorted({k for k in request.query_params if k not in REPORT_KEYS})
    fmt = request.query_params.get("format", "html").strip() or "html"
    errors = [
        {"field": k, "message": "unknown query parameter; the report takes train, serve, serve_months and format"}
        for k in unknown
    ]
    if fmt not in PAGE_FORMATS:
        errors.append({"field": "format", "message": f"give one of {', '.join(PAGE_FORMATS)}"})
    if errors:
        raise InputError("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)
    return fmt


async def procurement_of(request: Request, planner: PlannerDep) -> Procurement:
    """The query's halves (`train=`, `serve=`: each a query string of its own), planned."""
    params = request.query_params
    return await build_async(
        parse_report(params.get("train"), params.get("serve"), params.get("serve_months")), planner
    )


@router.get("/report", response_class=HTMLResponse)
async def report_page(request: Request, planner: PlannerDep) -> Response:
    """The training and serving plans side by side, for a purchase; `format=md` or `pdf` exports it."""
    fmt = _known(request)
    proc = await procurement_of(request, planner)
    if fmt == "md":
        return Response(report.markdown(proc), media_type="text/markdown; charset=utf-8")
    if fmt == "pdf":
        return await reports_of(request).procurement_pdf(request, proc)
    return _templates(request).TemplateResponse(request, "report.html", report_context(proc))
