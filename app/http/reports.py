"""The PDF renderers the JSON API reaches without importing the web layer (main.py sets app.state.reports)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from fastapi import Request
from starlette.responses import Response

from app.errors import PdfUnavailable

if TYPE_CHECKING:
    from app.compare.compare import Comparison
    from app.procurement.build import Procurement


class Reports(Protocol):
    """Pages printed to PDF (app/web/pdf.py's WebReports implements it)."""

    async def result_pdf(self, request: Request, query: str | None = None) -> Response: ...

    async def comparison_pdf(self, request: Request, comparison: Comparison) -> Response: ...

    async def procurement_pdf(self, request: Request, proc: Procurement) -> Response: ...


def reports_of(request: Request) -> Reports:
    """The app's PDF renderers; PdfUnavailable (501) in an app built without them."""
    reports: Reports | None = getattr(request.app.state, "reports", None)
    if reports is None:
        raise PdfUnavailable("this server was built without its HTML pages, so it cannot print them to PDF")
    return reports
