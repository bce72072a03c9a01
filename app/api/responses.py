"""OpenAPI descriptions of the responses routes share: problem+json errors and the export media types."""

from __future__ import annotations

from typing import Any

from app.http.problems import PROBLEM_JSON, Problem
from app.http.schemas import EstimateResponse

_PROBLEM_SCHEMA = {"schema": {"$ref": "#/components/schemas/Problem"}}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """problem+json responses for these statuses (422 and 500 are always possible)."""
    described = {
        400: "Invalid model id, or a request body that is not UTF-8 JSON",
        401: "Missing bearer token",
        403: "Wrong bearer token, uploads disabled, or a gated model",
        404: "Model not found",
        413: "Request body too large",
        422: "Invalid input: `errors` names each field and why",
        500: "Unexpected error (no details are leaked)",
        501: "PDF export unavailable: WeasyPrint or its system libraries are not installed (`detail` says which)",
        502: "The Hub answered with an unexpected error",
        503: "The Hub or the store is unavailable, or every inventory build slot is busy",
        504: "The request deadline (GPUPLAN_REQUEST_DEADLINE) passed; `detail` names what it was waiting for",
    }
    return {
        status: {"model": Problem, "description": described[status], "content": {PROBLEM_JSON: _PROBLEM_SCHEMA}}
        for status in sorted({*statuses, 422, 500})
    }


_TEXT = {"schema": {"type": "string"}}

ESTIMATE_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "model": EstimateResponse,
        "description": "The estimate: JSON by default; Markdown, CSV, an SVG chart or the PDF report with `format`.",
        "content": {
            "text/markdown": _TEXT,
            "text/csv": _TEXT,
            "image/svg+xml": _TEXT,
            "application/pdf": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

HUB_PROBLEMS = problems(400, 403, 404, 502, 503, 504)
