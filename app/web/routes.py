"""HTML routes: the planner form, the result page (a GET permalink), the calibration page, and error pages."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from pydantic import ValidationError
from starlette.responses import Response

from app import catalog
from app.core.fit import FitResult
from app.core.gpus import find_tier
from app.core.throughput import RunSize
from app.core.verdict import left_text, verdict
from app.errors import GpuplanError
from app.exports.svg import breakdown_chart, term_colours
from app.http import API_PREFIX
from app.http.band import AnswerOptions, banded
from app.http.deps import OptionalStoreDep, PlannerDep, StoreDep
from app.http.problems import Problem, from_validation
from app.service import Planned, Planner
from app.web.forms import canonical_query, form_groups, form_values, parse_query

logger = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

EXPORTS = (("Markdown", "md"), ("CSV", "csv"), ("SVG", "svg"), ("JSON", "json"), ("PDF", "pdf"))


def _templates(request: Request) -> Jinja2Templates:
    templates: Jinja2Templates = request.app.state.templates
    return templates


def _form_context(params: Mapping[str, str], errors: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The planner form's fields, the values to show and (on an error page) each invalid field's message."""
    values = form_values(params)
    return {"groups": form_groups(), "values": values, "catalog_ids": catalog.catalog_ids(), "errors": errors or {}}


def render_error(request: Request, problem: Problem, headers: Mapping[str, str]) -> Response:
    """error.html with the same title, status, detail and field errors as the problem+json."""
    from app.web.forms import field_label

    context: dict[str, Any] = {"problem": problem, "form": None, "label": field_label}
    if request.url.path == "/plan":  # show the submitted form again, each invalid field marked, to fix and resubmit
        context["form"] = _form_context(request.query_params, {e.field: e.message for e in problem.errors})
    return _templates(request).TemplateResponse(
        request, "error.html", context, status_code=problem.status, headers=dict(headers)
    )


@router.get("/", response_class=HTMLResponse)
async def index(request: Request) -> Response:
    """The planner form, with TrainingPlan's defaults."""
    return _templates(request).TemplateResponse(request, "index.html", {"form": _form_context({})})


@router.get("/models", response_class=HTMLResponse)
async def models_page(request: Request) -> Response:
    """The bundled catalog, filtered by text, family, size (billions of parameters), MoE and release month."""
    from app.catalog.search import families, find_models
    from app.web.forms import catalog_query

    query, values = catalog_query(request.query_params)
    context = {"rows": find_models(query), "families": families(), "values": values}
    return _templates(request).TemplateResponse(request, "models.html", context)


@router.post("/import", response_class=HTMLResponse)
async def import_config(request: Request) -> Response:
    """The planner form filled from a pasted or uploaded training config, with the import report."""
    from app.recipes import import_recipe
    from app.web.imports import imported_values, read_configs

    files, model = await read_configs(request)
    imported = import_recipe(files)
    context = {"form": _form_context(imported_values(imported, model)), "recipe": imported}
    return _templates(request).TemplateResponse(request, "index.html", context)


@router.post("/plan/config")
async def plan_from_model_config(request: Request, planner: PlannerDep) -> Response:
    """A model's config.json, pasted or uploaded (no Hub needed): stored by its hash, then its result page."""
    from fastapi.responses import RedirectResponse

    from app.web.imports import read_model_config

    name = await read_model_config(request, planner.settings)
    await planner.resolve(name)  # a config that cannot become an inventory is refused here, on this page
    return RedirectResponse(f"/plan?{urlencode({'model': name})}", status_code=303)


async def _fit_recommended(planner: Planner, planned: Planned) -> FitResult | None:
    rec = planned.recommendation
    if rec is None or rec.recommended is None or rec.recommended_gpus is None:
        return None
    tier = find_tier(rec.recommended)
    if tier is None:  # pragma: no cover - recommendations name tiers from GPU_TIERS
        return None
    plan = planned.estimate.plan.model_copy(update={"gpus": rec.recommended_gpus})
    try:
        return await planner.fit(planned.model, plan, tier)
    except GpuplanError:  # e.g. a plan that is valid on plan.gpus but not on the recommended count
        return None


def answer_options(params: Mapping[str, str]) -> AnswerOptions:
    """The page's `safe` option (empty or absent: the setting)."""
    given = {k: params[k].strip() for k in AnswerOptions.model_fields if params.get(k, "").strip()}
    try:
        return AnswerOptions.model_validate(given)
    except ValidationError as exc:
        raise from_validation(exc) from None


def run_size(params: Mapping[str, str]) -> RunSize:
    """The run the page times and prices: train_tokens and epochs from the query (empty or absent: the defaults)."""
    given = {k: params[k].strip() for k in RunSize.model_fields if params.get(k, "").strip()}
    try:
        return RunSize.model_validate(given)
    except ValidationError as exc:
        raise from_validation(exc) from None


def run_query(run: RunSize) -> str:
    """train_tokens and epochs where they differ from the defaults, for permalinks and exports."""
    default = RunSize()
    chosen = {k: getattr(run, k) for k in RunSize.model_fields if getattr(run, k) != getattr(default, k)}
    return urlencode([(k, str(v) if isinstance(v, int) else f"{v:g}") for k, v in chosen.items()])


@router.get("/plan", response_class=HTMLResponse)
async def plan_page(request: Request, planner: PlannerDep, store: OptionalStoreDep) -> Response:
    """The result page of one model and plan; its URL is the permalink."""
    query = parse_query(request.query_params.multi_items())
    run = run_size(request.query_params)
    model = await planner.resolve(query.model)
    planned = await planner.plan_async(model, query.to_plan(), run)
    plan_query = canonical_query(query)
    permalink = "&".join(q for q in (plan_query, run_query(run)) if q)
    api = f"{API_PREFIX}/estimate?{permalink}"
    base = (planner.settings.public_url or "").rstrip("/")  # never the Host header: it is the client's to forge
    found = await banded(planner, store, planned, answer_options(request.query_params).safe)
    judged = found.planned
    rec = judged.recommendation
    context = {
        "model": model,
        "est": judged.estimate,
        "rec": rec,
        "verdict": verdict(model, judged.estimate, rec),
        "left": {t.gpu: left_text(t, rec.headroom) for t in rec.tiers} if rec else {},
        "band": found.band,
        "safe": found.safe,
        "run": run,
        "plan_pairs": parse_qsl(plan_query),
        "run_pairs": parse_qsl(run_query(run)),
        "fit": await _fit_recommended(planner, judged),
        "comparable": found.comparable,
        "store_problem": found.store_problem,
        # our own SVG: every text in it is XML-escaped by app.exports.svg
        "chart": Markup(breakdown_chart(judged.estimate, rec)),
        "chart_narrow": Markup(breakdown_chart(judged.estimate, rec, narrow=True)),
        "colours": term_colours(judged.estimate),
        "permalink": f"/plan?{permalink}",
        "exports": [(label, f"{api}&format={fmt}") for label, fmt in EXPORTS],
        "embed": f'<img src="{base}{api}&format=svg" alt="GPU memory breakdown of {model.id}">',
        "form": _form_context(request.query_params),
    }
    return _templates(request).TemplateResponse(request, "plan.html", context)


@router.get("/calibrations", response_class=HTMLResponse)
async def calibrations_page(request: Request, store: StoreDep) -> Response:
    """Measured runs next to gpuplan's estimates: filtered, sorted and paged, with a scatter plot of every match."""
    from app.web.calibrations import calibrations_context

    context = await calibrations_context(store, request.query_params)
    return _templates(request).TemplateResponse(request, "calibrations.html", context)
