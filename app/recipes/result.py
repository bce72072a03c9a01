"""What goes into a recipe import (files) and what comes out (the plan fields and an honest report)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.core.plan import TrainingPlan
from app.recipes.parse import MAX_BYTES, refuse


class RecipeFile(BaseModel):
    """One uploaded config file: its name (shown in the report and in errors), its text, optionally its format."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, max_length=200, description="File name, e.g. qlora.yml or adapter_config.json.")
    text: str = Field(repr=False, description="The file's text (JSON or YAML), at most 1 MiB.")
    format: str | None = Field(
        None, description="axolotl, llamafactory, trl, transformers, peft or bitsandbytes; detected when absent."
    )

    @classmethod
    def from_bytes(cls, name: str, data: bytes, format: str | None = None) -> RecipeFile:
        """An uploaded file; bytes that are not UTF-8 text are a RecipeError naming the file."""
        if len(data) > MAX_BYTES:
            raise refuse(name, f"the file has {len(data):,} bytes, more than the {MAX_BYTES:,} a recipe may have")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise refuse(name, "the file is not UTF-8 text (binary data?)") from None
        return cls(name=name, text=text, format=format)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class FileFormat(_Frozen):
    file: str
    format: str
    detected: bool = Field(description="True when told apart by the file's keys, False when given.")


class MappedField(_Frozen):
    file: str
    field: str = Field(description="The recipe field (nested ones as outer.inner).")
    value: Any = Field(description="Its value in the file (secrets redacted).")
    plan_field: str = Field(description="The TrainingPlan field it sets, or `model`.")
    plan_value: Any
    default: bool = Field(False, description="The file leaves the field out; this is what the framework does then.")


class NotModelledField(_Frozen):
    file: str
    field: str
    value: Any
    why: str = Field(description="How it changes memory and why gpuplan's plan cannot say so.")
    default: bool = False


class FileField(_Frozen):
    file: str
    field: str


class RecipeImport(_Frozen):
    """A training plan built from the configs a user already runs, and what the import could not honour."""

    model: str | None = Field(description="The base model the files name (base_model, model_name_or_path, ...).")
    plan_fields: dict[str, Any] = Field(
        description="Only the plan fields the files set (explicitly or by their framework's defaults)."
    )
    plan: TrainingPlan = Field(description="plan_fields over TrainingPlan's defaults, validated.")
    formats: tuple[FileFormat, ...]
    mapped: tuple[MappedField, ...]
    not_modelled: tuple[NotModelledField, ...]
    ignored: tuple[FileField, ...] = Field(description="Fields with no memory effect (or that set nothing here).")
    unknown: tuple[FileField, ...] = Field(description="Fields no table knows.")


def summary_lines(imported: RecipeImport) -> list[str]:
    """The import report as text: formats, what set which plan field, what is not modelled, unknown keys."""
    lines = [f"from {f.file}: {f.format}{' (detected)' if f.detected else ''}" for f in imported.formats]
    lines += [
        f"  {m.file}: {m.field}={m.value!r} -> {m.plan_field}={m.plan_value!r}{' (framework default)' * m.default}"
        for m in imported.mapped
    ]
    lines += [f"  not modelled: {n.file}: {n.field}={n.value!r} ({n.why})" for n in imported.not_modelled]
    lines += [f"  unknown key: {u.file}: {u.field}" for u in imported.unknown]
    return lines
