"""The budgeted CI subset: the covering core always runs, the rest only while predicted to fit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.calibration.budget import BudgetRun, covering_core, point_features, point_work, run_within_budget
from app.calibration.matrix import Point, PointResult, expand, load_spec

SPEC = Path(__file__).resolve().parents[2] / "calibration" / "cpu-matrix.toml"


@pytest.fixture(scope="module")
def subset() -> list[Point]:
    return expand(load_spec(SPEC))[:48]


class FakeRun:
    """Runs nothing: advances a fake clock by `seconds_per_work` x the point's work and records the order."""

    def __init__(self, seconds_per_work: float, fixed_s: float = 0.0) -> None:
        self.now = 0.0
        self.rate, self.fixed = seconds_per_work, fixed_s
        self.order: list[str] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, points: list[Point]) -> Iterator[PointResult]:
        for point in points:
            self.order.append(point.id)
            self.now += self.fixed + self.rate * point_work(point)
        return iter(())


def test_the_core_covers_every_feature_with_a_third_of_the_work(subset: list[Point]) -> None:
    core = covering_core(subset)
    every = set().union(*(point_features(p) for p in subset))
    assert set().union(*(point_features(p) for p in core)) == every
    assert sum(map(point_work, core)) < 0.5 * sum(map(point_work, subset))
    assert covering_core(subset) == core  # deterministic: no clock, no randomness


def test_a_zero_budget_still_runs_the_whole_core_first_and_names_every_skip(subset: list[Point]) -> None:
    fake = FakeRun(1e-9)
    outcome = run_within_budget(subset, 0.0, fake, clock=fake.clock)
    core_ids = [p.id for p in covering_core(subset)]
    assert fake.order == core_ids
    assert {p.id for p, _ in outcome.skipped} == {p.id for p in subset} - set(core_ids)
    assert all("budget left" in why for _, why in outcome.skipped)


def test_a_large_budget_runs_every_point(subset: list[Point]) -> None:
    fake = FakeRun(1e-9)
    outcome = run_within_budget(subset, 1e9, fake, clock=fake.clock)
    assert sorted(fake.order) == sorted(p.id for p in subset) and not outcome.skipped


def test_a_tight_budget_stops_where_the_prediction_says_and_overruns_by_at_most_one_misjudged_point(
    subset: list[Point],
) -> None:
    fake = FakeRun(1e-9, fixed_s=0.5)
    total = sum(0.5 + 1e-9 * point_work(p) for p in subset)
    core_s = sum(0.5 + 1e-9 * point_work(p) for p in covering_core(subset))
    budget = core_s + (total - core_s) / 2
    outcome = run_within_budget(subset, budget, fake, clock=fake.clock)
    assert outcome.skipped and len(fake.order) > len(outcome.core_ids)
    assert outcome.elapsed_s <= budget  # the fixed + per-work fit predicts this fake exactly


def test_the_prediction_fits_a_fixed_and_a_per_work_cost() -> None:
    run = BudgetRun(budget_s=10, core_ids=frozenset(), timings=[(1.0, 3.0), (3.0, 7.0), (5.0, 11.0)])
    assert run.predict_s(10.0) == pytest.approx(21.0)
    assert BudgetRun(budget_s=1, core_ids=frozenset()).predict_s(5.0) == 0.0
    same = BudgetRun(budget_s=1, core_ids=frozenset(), timings=[(2.0, 4.0), (2.0, 6.0)])
    assert same.predict_s(4.0) == pytest.approx(10.0)
