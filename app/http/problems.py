"""Every error as RFC 9457 problem details: GpuplanError, HTTP errors, validation errors and crashes.

API routes answer `application/problem+json`; HTML routes hand the same `Problem` to a renderer
(`error.html`), so both shapes always carry the same title, status and detail.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, compile_path

from app.errors import GpuplanError, InputError, MalformedBody

logger = logging.getLogger(__name__)

PROBLEM_BASE = "https://gpuplan.dev/problems/"
PROBLEM_JSON = "application/problem+json"
# FastAPI puts where a value came from first in `loc`; the field name is what follows.
_LOC_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})


class FieldError(BaseModel):
    """One invalid input: which field, and why."""

    model_config = ConfigDict(frozen=True)

    field: str = Field(description="Dotted name of the field (`plan` for rules spanning several fields).")
    message: str


class Problem(BaseModel):
    """An error response (RFC 9457 problem details)."""

    model_config = ConfigDict(frozen=True)

    type: str = Field(description="URI naming the kind of problem, e.g. https://gpuplan.dev/problems/model-not-found.")
    title: str
    status: int
    detail: str
    errors: list[FieldError] = Field(default_factory=list, description="Field errors of invalid input.")


def problem_response(problem: Problem, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        problem.model_dump(mode="json"), status_code=problem.status, media_type=PROBLEM_JSON, headers=headers
    )


# RFC 9110's names where Python's http.HTTPStatus still has older ones.
_PHRASES = {413: "Content Too Large", 422: "Unprocessable Content"}


def _slugify(phrase: str) -> str:
    return "-".join(phrase.lower().replace("'", "").split())


def printable(text: str) -> str:
    """The text with lone surrogates (which UTF-8 cannot encode) as backslash escapes, so any answer encodes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


# pydantic's error types for "this is not an object" where a model (here: the whole body) was expected
_NOT_AN_OBJECT = frozenset({"model_type", "model_attributes_type", "dict_type"})
_JSON_KINDS = {list: "an array", str: "a string", bool: "true or false", int: "a number", float: "a number"}


def _not_an_object(error: Mapping[str, Any]) -> str:
    """What to say when the body is valid JSON (or not JSON at all) but not an object of the request's fields."""
    value = error.get("input")
    if isinstance(value, bytes | bytearray):
        return "the body must be a JSON object of the request's fields, sent with Content-Type: application/json"
    kind = next((name for kind, name in _JSON_KINDS.items() if type(value) is kind), None)
    kind = "null" if value is None and "input" in error else kind
    got = f", not {kind}" if kind else ""
    return f'the body must be a JSON object of the request\'s fields, e.g. {{"model": "..."}}{got}'


def field_errors(errors: Iterable[Mapping[str, Any]]) -> list[FieldError]:
    """pydantic/FastAPI error dicts as {field, message}; the offending input is never echoed back."""
    out: list[FieldError] = []
    for error in errors:
        loc = [printable(str(part)) for part in error.get("loc", ())]
        if loc and loc[0] in _LOC_SOURCES:
            source, loc = loc[0], loc[1:]
        else:
            source = ""
        if not loc and source == "body" and error.get("type") in _NOT_AN_OBJECT:
            out.append(FieldError(field="body", message=_not_an_object(error)))
            continue
        if not loc:
            loc = ["body" if source == "body" and error.get("type") == "missing" else "plan"]
        message = printable(str(error.get("msg", "invalid value")).removeprefix("Value error, "))
        out.append(FieldError(field=".".join(loc), message=message))
    return out


def _position(doc: object, pos: object) -> str:
    """`line L column C` of a JSON parse error (1-based, as json.JSONDecodeError counts them)."""
    if not isinstance(pos, int):
        return ""
    if not isinstance(doc, str):
        return f" at char {pos}"
    line = doc.count("\n", 0, pos) + 1
    column = pos - doc.rfind("\n", 0, pos)
    return f" at line {line} column {column}"


def malformed_body(errors: Sequence[Mapping[str, Any]], doc: object = None) -> MalformedBody | None:
    """The 400 for a body that is not JSON (FastAPI's and pydantic's `json_invalid`), saying what and where."""
    bad = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad is None:
        return None
    ctx = bad.get("ctx") or {}
    what = str(ctx.get("error") or bad.get("msg") or "cannot be parsed").removeprefix("Invalid JSON: ")
    loc = tuple(bad.get("loc", ()))
    where = _position(doc, loc[-1]) if loc and loc[0] == "body" else ""
    message = printable(f"the body is not valid JSON: {what}{where}")
    return MalformedBody(message, errors=[{"field": "body", "message": message}])


def validation_detail(errors: Sequence[FieldError]) -> str:
    """One error as `field: message`; several as `N problems: a: ...; b: ...` (each is also under `errors`)."""
    if not errors:
        return "the request is invalid"
    each = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return each if len(errors) == 1 else f"{len(errors)} problems: {each}"


def input_error(errors: Sequence[Mapping[str, Any]], doc: object = None) -> InputError:
    """A pydantic ValidationError's errors as the one InputError both the API and the HTML pages raise."""
    if (malformed := malformed_body(errors, doc)) is not None:
        return malformed
    fields = field_errors(errors)
    return InputError(validation_detail(fields), errors=[e.model_dump() for e in fields])


def from_validation(exc: ValidationError) -> InputError:
    return input_error(exc.errors(include_url=False, include_input=False))


# FastAPI's words for a JSON body that is not UTF-8 (json.loads raised something other than JSONDecodeError)
_UNPARSED_BODY = "There was an error parsing the body"


def from_gpuplan(exc: GpuplanError) -> Problem:
    return Problem(
        type=PROBLEM_BASE + exc.slug,
        title=exc.title,
        status=exc.status,
        detail=printable(exc.detail),
        errors=[
            FieldError.model_validate(e) if {"field", "message"} <= e.keys() else field_errors([e])[0]
            for e in exc.errors
        ],
    )


def from_http(status: int, detail: object) -> Problem:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    phrase = _PHRASES.get(status, phrase)
    text = detail if isinstance(detail, str) and detail else phrase
    if text == phrase:
        text = {
            404: "no such page or endpoint: see /docs for the API",
            405: "this method is not allowed here: see the Allow header",
        }.get(status, phrase)
    return Problem(type=PROBLEM_BASE + _slugify(phrase), title=phrase, status=status, detail=text)


def internal_error() -> Problem:
    return Problem(
        type=PROBLEM_BASE + "internal-error",
        title="Internal Server Error",
        status=500,
        detail="an unexpected error occurred on the server; it has been logged",
    )


def index_methods(app: FastAPI, prefix: str, routes: Iterable[BaseRoute]) -> None:
    """Remember which methods each path template answers, for a complete Allow header on 405."""
    table: list[tuple[re.Pattern[str], frozenset[str]]] = getattr(app.state, "route_methods", [])
    for route in routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if isinstance(path, str) and methods:
            table.append((compile_path(prefix + path)[0], frozenset(methods)))
    app.state.route_methods = table


def allowed_methods(request: Request) -> str | None:
    """Every method some route answers at this path (Starlette names only the first route's)."""
    table: list[tuple[re.Pattern[str], frozenset[str]]] = getattr(request.app.state, "route_methods", [])
    found = set().union(*(methods for pattern, methods in table if pattern.match(request.url.path)))
    return ", ".join(sorted(found)) if found else None


def to_problem(exc: Exception) -> tuple[Problem, dict[str, str]]:
    """The problem for any exception, and headers to keep (Allow on 405, WWW-Authenticate on 401)."""
    if isinstance(exc, GpuplanError):
        headers = {"WWW-Authenticate": 'Bearer realm="gpuplan"'} if exc.status == 401 else {}
        return from_gpuplan(exc), headers
    if isinstance(exc, RequestValidationError):
        return from_gpuplan(input_error(exc.errors(), exc.body)), {}
    if isinstance(exc, HTTPException) and exc.status_code == 400 and exc.detail == _UNPARSED_BODY:
        message = "the body is not valid JSON: it is not UTF-8 text"
        return from_gpuplan(MalformedBody(message, errors=[{"field": "body", "message": message}])), {}
    if isinstance(exc, HTTPException):
        keep = {k: v for k, v in (exc.headers or {}).items() if k.lower() in ("allow", "www-authenticate")}
        return from_http(exc.status_code, exc.detail), keep
    return internal_error(), {}


HtmlRenderer = Callable[[Request, Problem, Mapping[str, str]], Response]


def wants_html(request: Request) -> bool:
    """HTML pages render errors as HTML; the API, /healthz and /metrics answer problem+json."""
    path = request.url.path
    return not (path.startswith("/api/") or path in ("/api", "/healthz", "/readyz", "/metrics", "/openapi.json"))


def install(app: FastAPI, html: HtmlRenderer | None = None) -> None:
    """Register one handler for every error class; `html` renders the problem for HTML routes."""

    async def handle(request: Request, exc: Exception) -> Response:
        problem, headers = to_problem(exc)
        if problem.status == 405 and (allow := allowed_methods(request)):
            headers = {**headers, "Allow": allow}
        if problem.status >= 500 and not isinstance(exc, GpuplanError | HTTPException):
            logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        if html is not None and wants_html(request):
            return html(request, problem, headers)
        return problem_response(problem, headers)

    app.add_exception_handler(GpuplanError, handle)
    app.add_exception_handler(RequestValidationError, handle)
    app.add_exception_handler(HTTPException, handle)
    app.add_exception_handler(Exception, handle)
