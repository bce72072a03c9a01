"""The transformers engine against real generate() runs on the CPU reference: every point within ±5 %, the median
within ±2 %, and docs/serving-accuracy.md is exactly what these runs give."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from app.serving.calibrate import BOUND_PCT, MEDIAN_BOUND_PCT, POINTS, Point, measure, table

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving-accuracy.md"


@pytest.fixture(scope="module")
def points() -> list[Point]:
    return [measure(*point) for point in POINTS]


@pytest.mark.slow
def test_every_point_is_within_the_bounds(points: list[Point]) -> None:
    errors = {f"{p.family} {p.sequences}x{p.prompt}+{p.generated}": round(p.error_pct, 2) for p in points}
    assert all(abs(e) <= BOUND_PCT for e in errors.values()), errors
    assert abs(statistics.median(p.error_pct for p in points)) <= MEDIAN_BOUND_PCT, errors
    assert {p.moment for p in points} == {"prefill", "decode"}  # both peaks are exercised


@pytest.mark.slow
def test_the_docs_table_is_what_these_runs_give(points: list[Point]) -> None:
    assert DOC.read_text() == table(points), "run: python -m app.serving.calibrate --write docs/serving-accuracy.md"
