"""The 2025 families measured for real in CI: a few cheap points of calibration/cpu-matrix-2025.toml, held to bounds.

Per family the cheapest point with checkpointing and the cheapest without (by `point_work`), 14 points; their
covering core always runs (every family, method and checkpointing setting among them) and the rest while they are
predicted to fit GPUPLAN_CALIBRATION_2025_BUDGET_S (default 120 s). The full matrix (123 points) ships as data and is
re-estimated in test_shipped_accuracy.py; docs/accuracy-2025.md has its table.
"""

from __future__ import annotations

import functools
import os
import statistics
from pathlib import Path

import pytest

from app.calibration.budget import BudgetRun, point_work, run_within_budget
from app.calibration.matrix import Point, expand, load_spec, run_points
from tests.calibration.conftest import MachineProbe, report

SPEC = Path(__file__).resolve().parents[2] / "calibration" / "cpu-matrix-2025.toml"
BUDGET_S = float(os.environ.get("GPUPLAN_CALIBRATION_2025_BUDGET_S", "120"))
FAMILIES = {"qwen3", "qwen3_moe", "deepseek_v3", "gemma3_text", "gpt_oss", "llama4_text", "granitemoe"}


@pytest.fixture(scope="module")
def cheap_points() -> list[Point]:
    points = expand(load_spec(SPEC))
    chosen = []
    for family in sorted(FAMILIES):
        for ckpt in (True, False):
            mine = [p for p in points if p.family == family and p.plan.gradient_checkpointing is ckpt]
            chosen.append(min(mine, key=point_work))
    return chosen


def test_the_cheap_points_cover_every_family_with_checkpointing_on_and_off(cheap_points: list[Point]) -> None:
    assert {p.family for p in cheap_points} == FAMILIES
    assert len(cheap_points) == 2 * len(FAMILIES)


@pytest.mark.slow
@pytest.mark.timeout(BUDGET_S * 3 + 600)
def test_2025_families_within_5_percent_and_median_within_2(
    cheap_points: list[Point], machine: MachineProbe, request: pytest.FixtureRequest
) -> None:
    run = functools.partial(run_points, fp32_matmuls=machine.fp32_matmuls)
    done: BudgetRun = run_within_budget(cheap_points, BUDGET_S, run)
    report(
        request.config, f"2025 families: {len(done.results)} of {len(cheap_points)} points in {done.elapsed_s:.0f} s"
    )
    for result in done.results:
        report(request.config, f"  ran   {result.point.id} {result.comparison.error_pct:+.2f} %")
    for point, why in done.skipped:
        report(request.config, f"  skip  {point.id}: {why}")
    assert done.core_ids <= {r.point.id for r in done.results}, "the core always runs"
    assert {r.point.family for r in done.results} == FAMILIES
    worst = max(done.results, key=lambda r: abs(r.comparison.error_pct))
    assert abs(worst.comparison.error_pct) <= 5.0, f"{worst.point.id} {worst.point.plan}: {worst.comparison}"
    assert statistics.median(abs(r.comparison.error_pct) for r in done.results) <= 2.0
