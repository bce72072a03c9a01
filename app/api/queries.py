"""Query-string models parsed by pydantic directly (FastAPI's per-field path costs ~100x more), documented in OpenAPI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

# How the query string spells a field whose JSON type is not a scalar.
QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "targets": {
        "type": "string",
        "default": "all-linear",
        "pattern": r"^[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*$",
        "description": "LoRA target module names, comma-separated (or repeated), or 'all-linear'.",
    }
}


def query_data(request: Request) -> dict[str, Any]:
    """The query as a dict: one value as a string, a repeated key as a list of strings."""
    params = request.query_params
    return {key: (values[0] if len(values) == 1 else values) for key in params for values in (params.getlist(key),)}


def query_dependency(
    model: type[M], *, ignore: frozenset[str] = frozenset(), only: frozenset[str] | None = None
) -> Callable[[Request], Awaitable[M]]:
    """A dependency validating the query string as `model` (less the `ignore` keys, or only the `only` keys, which
    another dependency reads); errors carry loc ('query', field)."""

    async def parse(request: Request) -> M:
        data = {k: v for k, v in query_data(request).items() if k not in ignore and (only is None or k in only)}
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            errors = [_repeated(e, data) for e in exc.errors(include_url=False, include_input=False)]
            raise RequestValidationError(errors) from None

    return parse


def _repeated(error: Any, data: dict[str, Any]) -> dict[str, Any]:
    """The error with loc ('query', ...); on a key given several times, says so instead of pydantic's type words."""
    key = error["loc"][0] if error["loc"] else None
    given = data.get(key) if isinstance(key, str) else None
    if isinstance(given, list):
        message = f"given {len(given)} times in the query string: give it once"
        return {"type": "repeated_key", "loc": ("query", key), "msg": message}
    return {**error, "loc": ("query", *error["loc"])}


def _scalar(schema: dict[str, Any]) -> dict[str, Any]:
    """A field schema without the null alternative (a query string cannot send null)."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        rest = [o for o in options if o.get("type") != "null"]
        if len(rest) == 1:
            merged = {k: v for k, v in schema.items() if k != "anyOf"}
            return {**rest[0], **merged}
    return schema


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI `parameters` for every field of `model`, in the query."""
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema["properties"].items():
        field_schema = QUERY_SCHEMAS.get(name) or _scalar({k: v for k, v in prop.items() if k != "title"})
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": field_schema}
        if description := field_schema.get("description") or prop.get("description"):
            parameter["description"] = description
        out.append(parameter)
    return out
