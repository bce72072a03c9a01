"""Shared helpers of the recipe tests: the stored examples as RecipeFiles, and a report's fields by kind."""

from __future__ import annotations

from pathlib import Path

from app.recipes import RecipeFile, RecipeImport

EXAMPLES = Path(__file__).parent / "examples"


def example(name: str) -> RecipeFile:
    return RecipeFile(name=name, text=(EXAMPLES / name).read_text(encoding="utf-8"))


def recipe(name: str, text: str, format: str | None = None) -> RecipeFile:
    return RecipeFile(name=name, text=text, format=format)


def not_modelled(result: RecipeImport) -> dict[str, object]:
    """field -> value of every not-modelled entry."""
    return {e.field: e.value for e in result.not_modelled}


def mapped(result: RecipeImport) -> dict[tuple[str, str], object]:
    """(field, plan field) -> plan value of every mapped entry."""
    return {(e.field, e.plan_field): e.plan_value for e in result.mapped}
