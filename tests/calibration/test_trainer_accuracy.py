"""The Trainer loop measured for real in CI: cheap points of calibration/cpu-matrix-trainer.toml, held to bounds.

For every method x gradient accumulation (1, 4) x checkpointing (off, non-reentrant, reentrant) the matrix has, its
cheapest point (by `point_work`, which counts every micro-batch) runs through transformers.Trainer; a covering core
(every method, accumulation and checkpointing variant) always runs and the rest while they are predicted to fit
GPUPLAN_CALIBRATION_TRAINER_BUDGET_S (default 150 s). Every point must be within +-5 % and the median within +-2 %.
The table goes to artifacts/accuracy-trainer-ci.md, and to docs/accuracy-trainer.md when GPUPLAN_WRITE_DOCS=1;
the full matrix ships as data (test_shipped_accuracy.py re-estimates it).
"""

from __future__ import annotations

import functools
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from app.calibration.budget import BudgetRun, point_work, run_within_budget
from app.calibration.commands import ACCURACY_INTRO
from app.calibration.compare import to_record
from app.calibration.matrix import Point, expand, load_spec, run_points
from app.calibration.report import accuracy_markdown
from tests.calibration.conftest import MachineProbe, report

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "calibration" / "cpu-matrix-trainer.toml"
# bf16=True over fp32-loaded weights, kept apart so the 74 points of SPEC keep their draws
AUTOCAST_SPEC = ROOT / "calibration" / "cpu-matrix-trainer-autocast.toml"
BUDGET_S = float(os.environ.get("GPUPLAN_CALIBRATION_TRAINER_BUDGET_S", "150"))


def variant(point: Point) -> tuple[str, int, str]:
    plan = point.plan
    ckpt = ("reentrant" if plan.reentrant else "non-reentrant") if plan.gradient_checkpointing else "off"
    method = plan.method + ("+autocast" if plan.autocast else "")
    return method, min(plan.grad_accum_steps, 4), ckpt


def _cheapest(points: list[Point], key: Callable[[Point], tuple[object, ...]]) -> list[Point]:
    by_key: dict[tuple[object, ...], Point] = {}
    for point in points:
        best = by_key.get(key(point))
        if best is None or point_work(point) < point_work(best):
            by_key[key(point)] = point
    return [by_key[k] for k in sorted(by_key, key=str)]


@pytest.fixture(scope="module")
def cheap_points() -> list[Point]:
    """The cheapest point of each variant of SPEC, and of each method x checkpointing on/off of AUTOCAST_SPEC."""
    autocast = _cheapest(expand(load_spec(AUTOCAST_SPEC)), lambda p: (p.plan.method, p.plan.gradient_checkpointing))
    return _cheapest(expand(load_spec(SPEC)), variant) + autocast


def test_the_matrix_runs_through_the_trainer_and_covers_the_recipe_axes(cheap_points: list[Point]) -> None:
    assert load_spec(SPEC).loop == load_spec(AUTOCAST_SPEC).loop == "trainer"
    variants = {variant(p) for p in cheap_points}
    assert {m for m, _, _ in variants} == {"qlora", "lora", "full", "lora+autocast", "full+autocast"}
    assert {a for _, a, _ in variants} == {1, 4}
    assert {c for _, _, c in variants} == {"off", "non-reentrant", "reentrant"}
    assert {(m, c == "off") for m, _, c in variants if "autocast" in m} == {
        (m, off) for m in ("lora+autocast", "full+autocast") for off in (True, False)
    }


@pytest.mark.slow
@pytest.mark.timeout(BUDGET_S * 3 + 600)
def test_trainer_loop_within_5_percent_and_median_within_2(
    cheap_points: list[Point], machine: MachineProbe, request: pytest.FixtureRequest
) -> None:
    run = functools.partial(run_points, fp32_matmuls=machine.fp32_matmuls, loop="trainer")
    done: BudgetRun = run_within_budget(cheap_points, BUDGET_S, run)
    report(request.config, f"Trainer loop: {len(done.results)} of {len(cheap_points)} points in {done.elapsed_s:.0f} s")
    for result in done.results:
        report(
            request.config, f"  ran   {result.point.id} {variant(result.point)} {result.comparison.error_pct:+.2f} %"
        )
    for point, why in done.skipped:
        report(request.config, f"  skip  {point.id}: {why}")
    assert done.core_ids <= {r.point.id for r in done.results}, "the core always runs"
    assert {r.measurement.env.loop for r in done.results} == {"trainer"}
    records = [
        to_record(r.measurement, r.comparison, model_id=r.point.family, source="ci-trainer", split=r.point.split)
        for r in done.results
    ]
    text = accuracy_markdown(
        records,
        title="Accuracy through transformers.Trainer (CPU tracker)",
        intro=ACCURACY_INTRO + f" These points ran through the real `transformers.Trainer` loop "
        f"(`app/calibration/trainer_loop.py`): the cheapest point of each method x gradient accumulation x "
        f"checkpointing variant of `calibration/cpu-matrix-trainer.toml` ({len(records)} that ran within the CI "
        f"budget), written by `tests/calibration/test_trainer_accuracy.py`. The whole matrix: "
        f"`gpuplan accuracy --source cpu-matrix-trainer`.",
    )
    (ROOT / "artifacts").mkdir(exist_ok=True)
    (ROOT / "artifacts" / "accuracy-trainer-ci.md").write_text(text)
    if os.environ.get("GPUPLAN_WRITE_DOCS") == "1":
        (ROOT / "docs" / "accuracy-trainer.md").write_text(text)
    worst = max(done.results, key=lambda r: abs(r.comparison.error_pct))
    assert abs(worst.comparison.error_pct) <= 5.0, f"{worst.point.id} {worst.point.plan}: {worst.comparison}"
    errors = [r.comparison.error_pct for r in done.results]
    assert abs(statistics.median(errors)) <= 2.0
    assert statistics.median(abs(e) for e in errors) <= 2.0
