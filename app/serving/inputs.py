"""ServingPlan's fields as CLI flags, form inputs and query values, with TrainingPlan's input helpers (plan_input).

Names, kinds, choices, limits, defaults and help come from ServingPlan itself, so a new field appears in the
command, the API's query string and the Serve form at once; every bad value is reported in one error list.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from app.errors import InputError
from app.plan_input import PlanField, add_flags, as_text, input_fields
from app.serving.plan import ServingPlan


def serving_fields() -> tuple[PlanField, ...]:
    """Every ServingPlan field, in its declaration order."""
    return input_fields(ServingPlan)


def add_serving_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field (`--kv-dtype`, `--enforce-eager/--no-enforce-eager`, ...); unset flags stay None."""
    add_flags(parser, serving_fields())


def flag_values(ns: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(ns, f.name) for f in serving_fields() if getattr(ns, f.name, None) is not None}


def read_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Text values from (key, value) pairs (a form, a query string): empty means the default, the last one wins."""
    names = set(ServingPlan.model_fields)
    return {key: value.strip() for key, value in pairs if key in names and value.strip() != ""}


def build_serving_plan(values: Mapping[str, Any], *, naming: str = "field") -> ServingPlan:
    """A ServingPlan from values (text or typed); every invalid one is listed in one InputError.

    `naming="flag"` names fields as CLI flags (`--kv-dtype`) in the message and the errors list.
    """
    try:
        return ServingPlan.model_validate(dict(values))
    except ValidationError as exc:
        errors = []
        for error in exc.errors():
            where = ".".join(str(x) for x in error["loc"] if not isinstance(x, int)) or "plan"
            if naming == "flag" and where in ServingPlan.model_fields:
                where = "--" + where.replace("_", "-")
            errors.append({"field": where, "message": str(error["msg"]).removeprefix("Value error, ")})
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise InputError(detail, errors=errors) from None


def canonical_pairs(plan: ServingPlan) -> list[tuple[str, str]]:
    """The fields that differ from the defaults, as text (a permalink's query)."""
    default = ServingPlan().model_dump()
    return [(k, as_text(v)) for k, v in plan.model_dump().items() if v != default[k]]
