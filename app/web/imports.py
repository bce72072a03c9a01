"""The planner's "paste or upload your config" box: a training config fills the form, with what was mapped."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from app.errors import InputError
from app.plan_input import as_text
from app.settings import Settings

MAX_FILES = 4


async def read_configs(request: Request) -> tuple[list[Any], str | None]:
    """The pasted text and uploaded files of the import form, as RecipeFiles, and the model typed (if any)."""
    from app.recipes import RecipeFile

    files: list[Any] = []
    async with request.form(max_files=MAX_FILES, max_fields=8) as form:  # closes the spooled uploads
        text = form.get("config_text")
        if isinstance(text, str) and text.strip():
            files.append(RecipeFile.from_bytes("pasted config", text.encode()))
        for upload in form.getlist("config_file"):
            if isinstance(upload, UploadFile) and upload.filename:
                files.append(RecipeFile.from_bytes(upload.filename, await upload.read()))
        model = form.get("model")
    if not files:
        raise InputError(
            "paste a training config or choose a file: an axolotl or LLaMA-Factory YAML, TrainingArguments / "
            "SFTConfig, adapter_config.json, a DeepSpeed config or a BitsAndBytesConfig",
            errors=[{"field": "config_text", "message": "nothing to import"}],
        )
    return files, model.strip() if isinstance(model, str) and model.strip() else None


async def read_model_config(request: Request, settings: Settings) -> str:
    """The pasted or uploaded config.json of the "give a config.json" box, stored; returns its `config:` name."""
    from app import uploads
    from app.resolver import MAX_LOCAL_CONFIG_BYTES

    async with request.form(max_files=1, max_fields=4) as form:  # the body limit (GPUPLAN_MAX_BODY_BYTES) applies
        text, upload = form.get(uploads.FIELD), form.get("config_json_file")
        if isinstance(upload, UploadFile) and upload.filename:
            raw, where = await upload.read(MAX_LOCAL_CONFIG_BYTES + 1), upload.filename
        elif isinstance(text, str) and text.strip():
            raw, where = text.encode(), "the pasted config.json"
        else:
            raise InputError(
                "paste a model's config.json or choose the file (the one on the model's Hub page)",
                errors=[{"field": uploads.FIELD, "message": "nothing given"}],
            )
    return uploads.save(settings, uploads.parse_config(raw, where, MAX_LOCAL_CONFIG_BYTES))


def imported_values(imported: Any, model: str | None) -> dict[str, str]:
    """The planner form's values for an imported recipe: its plan, and the model typed or the files' own."""
    values = {name: as_text(value) for name, value in imported.plan.model_dump().items()}
    values["model"] = model or imported.model or ""
    return values
