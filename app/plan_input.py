"""The one plan-input adapter: TrainingPlan's fields as CLI flags, form inputs and query/recipe values.

Names, kinds, choices, limits, defaults and help all come from TrainingPlan itself, so a new plan field appears
in every surface at once. One reader turns text values (a flag, a form input, a query string with repeated keys,
a recipe's plan fields) into a TrainingPlan and reports every bad value at once in one error list.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from app.core.plan import FOLLOWS_METHOD, TrainingPlan
from app.errors import PlanError

Kind = Literal["bool", "int", "float", "choice", "text"]
# fields a form or query gives as several values (repeated keys are joined, as TrainingPlan splits on commas)
MULTI = frozenset({"targets"})


@dataclass(frozen=True)
class PlanField:
    """One TrainingPlan field as an input: its kind, choices, limits, default and help."""

    name: str
    kind: Kind
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: str | None = None
    high: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def as_text(value: object) -> str:
    """A plan value as it appears in a form, a query string or a flag's help."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def literal_values(annotation: Any) -> tuple[str, ...]:
    """The choices of a Literal (or an optional Literal); () for anything else."""
    if get_origin(annotation) is Literal:
        return tuple(str(v) for v in get_args(annotation))
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return literal_values(args[0])
    return ()


def bounds(info: FieldInfo) -> tuple[str | None, str | None]:
    low = high = None
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge | annotated_types.Gt):
            low = as_text(meta.ge if isinstance(meta, annotated_types.Ge) else meta.gt)
        if isinstance(meta, annotated_types.Le | annotated_types.Lt):
            high = as_text(meta.le if isinstance(meta, annotated_types.Le) else meta.lt)
    return low, high


def input_field(name: str, info: FieldInfo) -> PlanField:
    """One pydantic field as an input: bool, int/float with its limits, a Literal's choices, or text."""
    help_text = (info.description or "").strip()
    annotation = info.annotation
    if annotation is bool:
        return PlanField(name, "bool", info.default, help_text)
    if annotation in (int, float):
        low, high = bounds(info)
        return PlanField(name, "int" if annotation is int else "float", info.default, help_text, low=low, high=high)
    choices = literal_values(annotation)
    return PlanField(name, "choice" if choices else "text", info.default, help_text, choices=choices)


def input_fields(model: type[BaseModel]) -> tuple[PlanField, ...]:
    """Every field of a plan model (TrainingPlan, ServingPlan), in its declaration order."""
    return tuple(input_field(name, info) for name, info in model.model_fields.items())


def plan_fields() -> tuple[PlanField, ...]:
    """Every TrainingPlan field, in its declaration order."""
    return input_fields(TrainingPlan)


def add_flags(parser: argparse.ArgumentParser, fields: Iterable[PlanField]) -> None:
    """One flag per field (`--seq-len`, `--dora/--no-dora`, ...); unset flags stay None (the default)."""
    for field in fields:
        follows = field.default is None or field.name in FOLLOWS_METHOD  # the help says what it follows
        default = "" if follows else f" (default {as_text(field.default)})"
        help_text = field.help.replace("%", "%%") + default
        if field.kind == "bool":
            action = argparse.BooleanOptionalAction
            parser.add_argument(field.flag, dest=field.name, action=action, default=None, help=help_text)
            continue
        kind = {"int": int, "float": float}.get(field.kind, str)
        choices = field.choices or None
        parser.add_argument(field.flag, dest=field.name, type=kind, choices=choices, default=None, help=help_text)


def add_plan_flags(parser: argparse.ArgumentParser, exclude: Iterable[str] = ()) -> None:
    """The TrainingPlan flags of `gpuplan estimate` and `gpuplan calibrate` (but those in `exclude`)."""
    left_out = set(exclude)
    add_flags(parser, (f for f in plan_fields() if f.name not in left_out))


def read_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Text plan values from (key, value) pairs: empty means "the default", repeated MULTI keys are joined."""
    values: dict[str, list[str]] = {}
    names = set(TrainingPlan.model_fields)
    for key, value in pairs:
        if key in names and value.strip() != "":
            values.setdefault(key, []).append(value.strip())
    return {k: ",".join(v) if k in MULTI else v[-1] for k, v in values.items()}


def build_plan(values: Mapping[str, Any], *, naming: str = "field", strict: bool = False) -> TrainingPlan:
    """A TrainingPlan from values (text or typed); every invalid one is listed in one PlanError.

    `naming="flag"` names fields as CLI flags (`--seq-len`) in the message and the errors list; `strict=True`
    takes JSON values only in the schema's types (no 0 for false), as the API's JSON bodies do.
    """
    try:
        return TrainingPlan.model_validate(dict(values), strict=strict)
    except ValidationError as exc:
        errors = []
        for error in exc.errors():
            where = ".".join(str(x) for x in error["loc"] if not isinstance(x, int)) or "plan"
            if naming == "flag" and where in TrainingPlan.model_fields:
                where = "--" + where.replace("_", "-")
            errors.append({"field": where, "message": str(error["msg"]).removeprefix("Value error, ")})
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise PlanError(detail, errors=errors) from None
