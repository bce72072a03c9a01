"""The comparison page `/compare?plan=...&plan=...` (the URL is the permalink) and its add-a-plan form."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from starlette.datastructures import QueryParams
from starlette.responses import Response

from app.compare.compare import Comparison, compare_with, run_pairs
from app.compare.entries import MAX_PLANS, PlanEntry, entry_from_pairs, parse_entries, split_words
from app.compare.report import permalink, terms
from app.compare.svg import comparison_chart, term_colours
from app.core.plan import TrainingPlan
from app.core.tiers import GPU_TIERS
from app.errors import PlanError
from app.http import API_PREFIX
from app.http.deps import PlannerDep
from app.web.forms import LABELS
from app.web.routes import run_size

router = APIRouter(include_in_schema=False)

EXPORTS = (("Markdown", "md"), ("SVG", "svg"), ("JSON", "json"), ("PDF", "pdf"))
ACTION_KEYS = ("from", "change", "to", "changes", "mode")


def change_fields() -> list[tuple[str, str]]:
    """What the add-a-plan form may change: the model, the GPU tier, and every TrainingPlan field."""
    fields = [("model", "Model"), ("gpu", "GPU tier (judge the plan on it)")]
    return fields + [(name, LABELS.get(name, name)) for name in TrainingPlan.model_fields]


def _changes(params: QueryParams) -> list[tuple[str, str]]:
    """The form's changes: `change`/`to` pairs (a field and its new value) and the `changes` words."""
    pairs = [(k.strip(), v) for k, v in zip(params.getlist("change"), params.getlist("to"), strict=False) if k.strip()]
    for text in params.getlist("changes"):
        if text.strip():
            pairs += split_words(text)
    return pairs


def _edited(entries: list[PlanEntry], params: QueryParams) -> list[PlanEntry]:
    """The plans with one more (or plan N replaced): plan `from` with the form's changes over its fields."""
    raw = params.get("from", "1").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= len(entries):
        message = f"start from one of the plans, 1 to {len(entries)}"
        raise PlanError(f"from: {message}", errors=[{"field": "from", "message": message}])
    base, changes = int(raw), _changes(params)
    if not changes:  # nothing changed: the comparison as it is
        return entries
    replace = params.get("mode") == "replace"
    number = base if replace else len(entries) + 1
    if number > MAX_PLANS:
        message = f"a comparison holds at most {MAX_PLANS} plans: remove one, or replace a plan instead"
        raise PlanError(message, errors=[{"field": "plan", "message": message}])
    changed = dict.fromkeys(k for k, _ in changes)
    kept = [
        (k, v) for k, v in entries[base - 1].pairs() if k not in changed and not (k == "quant" and "method" in changed)
    ]
    entry = entry_from_pairs([*kept, *changes], number)  # a bad change names the plan it makes
    out = list(entries)
    if replace:
        out[base - 1] = entry
    else:
        out.append(entry)
    return out


def term_label(term: str) -> Markup:
    """`paged_optimizer_state` with a line-break opportunity after each `_` (a phone wraps it between words)."""
    return Markup("_<wbr>").join(escape(part) for part in term.removesuffix("_bytes").split("_"))


def _plan_link(entry: PlanEntry, run_pairs: Sequence[tuple[str, str]]) -> str:
    return "/plan?" + urlencode([(k, v) for k, v in entry.pairs() if k != "gpu"] + list(run_pairs))


def _without(comparison: Comparison, number: int) -> str:
    pairs = [(k, v) for i, (k, v) in enumerate(comparison.query()) if not (k == "plan" and i == number - 1)]
    return "/compare?" + urlencode(pairs)


def compare_context(comparison: Comparison) -> dict[str, Any]:
    """What compare.html shows (the PDF renders the same): headlines, the shared-scale chart, the terms, links."""
    query = urlencode(comparison.query())
    run_pairs = [(k, v) for k, v in comparison.query() if k != "plan"]
    api = f"{API_PREFIX}/compare?{query}"
    return {
        "comparison": comparison,
        "columns": comparison.columns,
        "cheapest": comparison.cheapest,
        # our own SVG: every text in it is XML-escaped by app.compare.svg
        "chart": Markup(comparison_chart(comparison)),
        "colours": term_colours(comparison),
        "terms": terms(comparison),
        "term_labels": {t: term_label(t) for t in terms(comparison)},
        "permalink": permalink(comparison),
        "exports": [(label, f"{api}&format={fmt}") for label, fmt in EXPORTS],
        "plan_links": {c.number: _plan_link(c.entry, run_pairs) for c in comparison.columns},
        "remove_links": {c.number: _without(comparison, c.number) for c in comparison.columns},
        "fields": change_fields(),
        "tiers": [t.name for t in GPU_TIERS],
        "run_pairs": run_pairs,
        "max_plans": MAX_PLANS,
    }


def _templates(request: Request) -> Jinja2Templates:
    templates: Jinja2Templates = request.app.state.templates
    return templates


def render_compare(request: Request, comparison: Comparison) -> str:
    """The comparison page's HTML (the PDF export prints it)."""
    template = _templates(request).get_template("compare.html")
    return template.render({"request": request, **compare_context(comparison)})


async def comparison_of(request: Request, planner: PlannerDep, *, minimum: int) -> Comparison:
    """The query's plans (repeated `plan=`) and run size, compared."""
    entries = parse_entries(request.query_params.getlist("plan"), minimum=minimum)
    return await compare_with(planner, entries, run_size(request.query_params))


@router.get("/compare", response_class=HTMLResponse)
async def compare_page(request: Request, planner: PlannerDep) -> Response:
    """Plans side by side on one scale; `from` + `change`/`to` (or `changes`) adds a plan and redirects."""
    params = request.query_params
    if any(k in params for k in ("change", "changes")):
        entries = _edited(parse_entries(params.getlist("plan"), minimum=1), params)
        pairs = [("plan", e.query()) for e in entries] + run_pairs(run_size(params))
        return RedirectResponse("/compare?" + urlencode(pairs), status_code=303)
    comparison = await comparison_of(request, planner, minimum=1)
    context = compare_context(comparison)
    return _templates(request).TemplateResponse(request, "compare.html", context)
