"""The README's "How the estimate is computed" names a function for every row, and every term has a row."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from app.catalog import load_spec
from app.core.estimate import NOTES, estimate
from app.core.plan import TrainingPlan

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SECTION = README.split("## How the estimate is computed", 1)[1].split("\n## ", 1)[0]
ROWS = [line for line in SECTION.splitlines() if line.startswith("| ") and not line.startswith("| term")]


def _code_names(row: str) -> list[tuple[str, str]]:
    """`module:function` pairs of a row's code column; a bare `function` after one is in the same module."""
    names, module = [], None
    for name in re.findall(r"`([\w:]+)`", row.rsplit("|", 2)[1]):
        if ":" in name:
            module, name = name.split(":")
        assert module is not None, row
        names.append((module, name))
    return names


def test_every_row_names_functions_that_exist() -> None:
    assert len(ROWS) > 20
    for row in ROWS:
        names = _code_names(row)
        assert names, row
        for module, name in names:
            assert callable(getattr(importlib.import_module(f"app.core.{module}"), name, None)), (module, name)


def test_every_breakdown_term_has_a_row() -> None:
    documented = {m.group(1) for row in ROWS if (m := re.match(r"\| `(\w+)`", row))}
    spec = load_spec("meta-llama/Llama-2-7b-hf")
    assert spec is not None
    plans = [TrainingPlan(), TrainingPlan(method="full", optimizer="adamw", sharding="zero3", gpus=8, offload=True)]
    terms = {t.term for plan in plans for t in estimate(spec, plan).breakdown}
    assert (set(NOTES) | terms | {"offloaded_bytes"}) <= documented
