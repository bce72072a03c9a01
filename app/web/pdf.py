"""PDF reports: the result page, the comparison page and the procurement report as they print, through WeasyPrint (app/exports/pdf.py).

The PDF is the page itself — the same handler, template and data — so whatever the page shows (verdict, accuracy,
tiers, ...) the PDF shows; the print stylesheet already makes it a report. Laid over it: the tiers table (hidden
from the one-page print to the screen) and a "stack modelled" section with the versions this server models.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import Request
from jinja2 import Environment
from starlette.responses import Response

from app.compare.compare import Comparison
from app.exports.pdf import html_to_pdf
from app.exports.stack import stack_versions
from app.procurement.build import Procurement
from app.web.templating import STATIC_DIR

PDF_MEDIA = "application/pdf"
PDF_CSS = """
#tier-section.print-compact { display: block !important; }
#stack { break-inside: avoid; font-size: 7pt; }
"""


def _stack_html(env: Environment) -> str:
    return env.get_template("_stack.html").render(stack=stack_versions())


def with_stack(html: str, env: Environment) -> str:
    """The page with the stack section at the end of its main content."""
    return html.replace("</main>", _stack_html(env) + "</main>", 1)


def filename(text: str) -> str:
    """A safe download name: `gpuplan-meta-llama-Llama-3.1-8B.pdf`."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:80] or "report"
    return f"gpuplan-{slug}.pdf"


async def pdf_response(html: str, env: Environment, name: str) -> Response:
    """The HTML printed to PDF in a worker thread (WeasyPrint takes about a second), as a download."""
    pdf = await asyncio.to_thread(html_to_pdf, with_stack(html, env), STATIC_DIR, PDF_CSS)
    return Response(pdf, media_type=PDF_MEDIA, headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _env(request: Request) -> Environment:
    env: Environment = request.app.state.templates.env
    return env


class WebReports:
    """The PDF renderers the JSON API reaches through app.state.reports (it may not import the web layer)."""

    async def result_pdf(self, request: Request, query: str | None = None) -> Response:
        """The result page of the request's model and plan (`/plan?...`, or `query` for a POSTed plan) as a PDF."""
        from app.web.routes import plan_page

        if query is not None:  # the page reads its plan from the query string, as its permalink has it
            request = Request({**request.scope, "method": "GET", "query_string": query.encode()}, request.receive)
        state = request.app.state
        page: Any = await plan_page(request, state.planner, getattr(state, "store", None))
        model = request.query_params.get("model", "report")
        return await pdf_response(bytes(page.body).decode("utf-8"), _env(request), filename(model))

    async def comparison_pdf(self, request: Request, comparison: Comparison) -> Response:
        """The comparison page of `comparison` as a PDF."""
        from app.web.compare import render_compare

        name = filename("compare-" + "-vs-".join(c.planned.model.id.split("/")[-1] for c in comparison.columns[:3]))
        return await pdf_response(render_compare(request, comparison), _env(request), name)

    async def procurement_pdf(self, request: Request, proc: Procurement) -> Response:
        """The procurement report page of `proc` as a PDF (it carries its own stack section per half)."""
        from app.web.report import render_report

        html = render_report(request, proc, request.app.state.templates)
        pdf = await asyncio.to_thread(html_to_pdf, html, STATIC_DIR, PDF_CSS)
        headers = {"Content-Disposition": f'attachment; filename="{procurement_filename(proc)}"'}
        return Response(pdf, media_type=PDF_MEDIA, headers=headers)


def procurement_filename(proc: Procurement) -> str:
    """`gpuplan-report-Llama-3.1-8B.pdf`: the report named after the models of its halves."""
    names = dict.fromkeys(
        h.split("/")[-1] for h in (proc.train and proc.train.planned.model.id, proc.serve and proc.serve.model.id) if h
    )
    return filename("report-" + "-".join(names))


def procurement_pdf_bytes(proc: Procurement) -> bytes:
    """The procurement report page as PDF bytes without a server (`gpuplan report --format pdf`)."""
    from app.web.report import render_report
    from app.web.templating import make_templates

    return html_to_pdf(render_report(None, proc, make_templates()), STATIC_DIR, PDF_CSS)


def comparison_pdf_bytes(comparison: Comparison) -> bytes:
    """The comparison page as PDF bytes without a server (`gpuplan compare --format pdf`)."""
    from app.web.compare import compare_context
    from app.web.templating import make_templates

    env = make_templates().env
    html = env.get_template("compare.html").render({"request": None, **compare_context(comparison)})
    return html_to_pdf(with_stack(html, env), STATIC_DIR, PDF_CSS)
