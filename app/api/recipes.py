"""POST /estimate/from-config: estimate the run a user's own training config describes (JSON or multipart)."""

from __future__ import annotations

import json
from typing import Any, get_args

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.api.responses import HUB_PROBLEMS, problems
from app.core.plan import Method
from app.errors import InputError
from app.http.deps import PlannerDep
from app.http.problems import from_validation
from app.http.schemas import MAX_MODEL_CHARS
from app.plan_input import build_plan

METHODS = get_args(Method)  # another value is build_plan's 422

router = APIRouter(tags=["estimate"])

MAX_FILES = 8


class RecipeFileIn(BaseModel):
    """One config file as text."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, examples=["qlora.yml"])
    text: str = Field(description="The file's text (YAML or JSON), at most 1 MiB.")
    format: str | None = Field(
        None, description="axolotl, llamafactory, trl, transformers, peft or bitsandbytes; detected when absent."
    )


class RecipeRequest(BaseModel):
    """Config files a user already runs, an optional model (else the files' base model) and plan overrides."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1, max_length=MAX_MODEL_CHARS)
    files: list[RecipeFileIn] = Field(min_length=1, max_length=MAX_FILES)
    plan: dict[str, Any] = Field(default_factory=dict, description="TrainingPlan fields that override the files'.")


_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": RecipeRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "model": {"type": "string"},
                    },
                    "required": ["files"],
                }
            },
        },
    }
}


@router.post("/estimate/from-config", responses={**HUB_PROBLEMS, **problems(413)}, openapi_extra=_BODY)
async def estimate_from_config(request: Request, planner: PlannerDep) -> JSONResponse:
    """Estimate the run an axolotl/LLaMA-Factory/TRL/TrainingArguments/PEFT/bitsandbytes config describes."""
    from app.recipes import import_recipe

    body = await _read(request)
    stack = body.plan.get("stack", "transformers-5")
    if stack not in ("transformers-5", "transformers-4"):
        message = "stack: give transformers-5 or transformers-4"
        raise InputError(f"plan.{message}", errors=[{"field": "plan.stack", "message": message}])
    method = body.plan.get("method")
    imported = import_recipe([_file(f) for f in body.files], stack, method if method in METHODS else None)
    plan = build_plan({**imported.plan_fields, **body.plan}) if body.plan else imported.plan
    name = body.model or imported.model
    if not name:
        message = "name a model: the files name none (base_model, model_name_or_path); give `model`"
        raise InputError(f"model: {message}", errors=[{"field": "model", "message": message}])
    planned = await planner.plan_async(await planner.resolve(name), plan)
    out = json.loads(planned.export("json"))
    out["recipe"] = imported.model_dump(mode="json", exclude={"plan", "plan_fields"})
    return JSONResponse(out)


def _file(item: RecipeFileIn) -> Any:
    from app.recipes import RecipeFile

    return RecipeFile.from_bytes(item.name, item.text.encode(), item.format)


async def _read(request: Request) -> RecipeRequest:
    """The request as a RecipeRequest: a JSON body, or a multipart form of files (+ model)."""
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            return await _read_form(request)
        return RecipeRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise from_validation(exc) from None


async def _read_form(request: Request) -> RecipeRequest:
    async with request.form(max_files=MAX_FILES, max_fields=16) as form:  # closes the spooled uploads
        files = []
        for upload in form.getlist("files"):
            if isinstance(upload, str):
                raise InputError("files: send each config as a file part named `files`")
            data = await upload.read()
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise InputError(f"files: {upload.filename or 'a file'} is not UTF-8 text (binary data?)") from None
            files.append(RecipeFileIn(name=upload.filename or "upload", text=text))
        model = form.get("model")
    return RecipeRequest(model=model if isinstance(model, str) and model.strip() else None, files=files)
