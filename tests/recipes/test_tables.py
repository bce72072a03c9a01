"""The recipe tables are consistent data, and app.recipes stays pure (no torch, no web framework)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from app.core.plan import TrainingPlan
from app.recipes import FORMATS
from app.recipes.formats import Format
from app.recipes.rules import Maps, Nested, Rule, Unmodelled

PLAN_FIELDS = set(TrainingPlan.model_fields) | {"model"}


def test_importing_app_recipes_loads_no_torch_and_no_web_framework() -> None:
    code = (
        "import sys, json, app.recipes\n"
        "heavy = ('torch', 'transformers', 'peft', 'bitsandbytes', 'fastapi', 'starlette', 'httpx', 'sqlalchemy', "
        "'jinja2')\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout) == []


def _rules(fields: dict[str, Rule] | object) -> list[tuple[str, Rule]]:
    assert isinstance(fields, dict)
    found: list[tuple[str, Rule]] = []
    for name, rule in fields.items():
        found.append((name, rule))
        if isinstance(rule, Nested):
            found += [(f"{name}.{k}", r) for k, r in _rules(dict(rule.table))]
    return found


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=lambda f: f.name)
def test_every_mapping_sets_plan_fields_and_every_reason_is_written(fmt: Format) -> None:
    for name, rule in _rules(dict(fmt.fields)):
        if isinstance(rule, Maps):
            assert set(rule.targets) <= PLAN_FIELDS, name
        if isinstance(rule, Unmodelled):
            assert len(rule.why) > 10, name


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=lambda f: f.name)
def test_defaults_and_distinctive_keys_are_fields_of_the_format(fmt: Format) -> None:
    assert set(fmt.defaults({})) <= set(fmt.fields), fmt.name
    assert fmt.distinctive <= set(fmt.fields), sorted(fmt.distinctive - set(fmt.fields))
    for canonical, aliases in fmt.aliases.items():
        assert {canonical, *aliases} <= set(fmt.fields), canonical
