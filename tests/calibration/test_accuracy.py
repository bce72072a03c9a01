"""The CPU calibration matrix in CI: real training steps measured by the tracker, held to the error bounds.

Runs the CI subset (the first 48 points of calibration/cpu-matrix.toml: every family, QLoRA/LoRA/full,
checkpointing on and off, seq 128-2048, batch 1-4, rank 8-64, all-linear and attention-only) within a time
budget (GPUPLAN_CALIBRATION_BUDGET_S, default 600 s): a covering core of it always runs (every family under
every method and checkpointing setting it has, both splits; app/calibration/budget.py), the other points while
they are predicted to fit. On a CPU whose 16-bit GEMM is slow, matmuls compute through fp32 (same tensors,
same bytes: test_matmul.py). Every point that ran must be within +-5 % and the median within +-2 %, in-sample
(tune) and out-of-sample (holdout) alike; the terminal summary lists what ran and what did not, and why. The
table is written to artifacts/accuracy-ci.md, and to docs/accuracy.md when GPUPLAN_WRITE_DOCS=1.
"""

from __future__ import annotations

import functools
import os
import statistics
from pathlib import Path

import pytest

from app.calibration.budget import BudgetRun, covering_core, run_within_budget
from app.calibration.commands import ACCURACY_INTRO
from app.calibration.compare import to_record
from app.calibration.matrix import Point, expand, load_spec, run_points
from app.calibration.report import ACCURACY_TITLE, accuracy_markdown
from tests.calibration.conftest import MachineProbe, report

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "calibration" / "cpu-matrix.toml"
CI_POINTS = 48
BUDGET_S = float(os.environ.get("GPUPLAN_CALIBRATION_BUDGET_S", "600"))


@pytest.fixture(scope="module")
def subset() -> list[Point]:
    return expand(load_spec(SPEC))[:CI_POINTS]


@pytest.fixture(scope="module")
def outcome(subset: list[Point], machine: MachineProbe, request: pytest.FixtureRequest) -> BudgetRun:
    run = functools.partial(run_points, fp32_matmuls=machine.fp32_matmuls)
    done = run_within_budget(subset, BUDGET_S, run)
    report(
        request.config,
        f"CI subset: {len(done.results)} of {len(subset)} points ran in {done.elapsed_s:.0f} s "
        f"(core {len(done.core_ids)}, budget {BUDGET_S:.0f} s)",
    )
    for result in done.results:
        kind = "core" if result.point.id in done.core_ids else "budget"
        report(
            request.config,
            f"  ran   {result.point.id} [{kind}, {result.point.split}] {result.comparison.error_pct:+.2f} % "
            f"in {result.measurement.duration_s:.1f} s",
        )
    for point, why in done.skipped:
        report(request.config, f"  skip  {point.id}: {why}")
    return done


def test_the_core_covers_the_subset(subset: list[Point]) -> None:
    core = covering_core(subset)
    plans = [p.plan for p in core]
    assert {p.family for p in core} == {"llama", "mistral", "qwen2", "gemma", "phi3", "mixtral"}
    assert {p.method for p in plans} == {"qlora", "lora", "full"}
    assert {p.gradient_checkpointing for p in plans} == {True, False}
    assert {p.split for p in core} == {"tune", "holdout"}
    assert {p.plan.dtype for p in core} == {"bf16"}
    pairs = {(p.family, p.plan.method) for p in subset}
    assert {(p.family, p.plan.method) for p in core} == pairs
    assert len(core) < len(subset)


@pytest.mark.slow
@pytest.mark.timeout(BUDGET_S * 3 + 900)
def test_every_point_within_5_percent_and_median_within_2(outcome: BudgetRun) -> None:
    results = outcome.results
    assert outcome.core_ids <= {r.point.id for r in results}, "the core always runs"
    assert len(results) + len(outcome.skipped) == CI_POINTS
    records = [
        to_record(r.measurement, r.comparison, model_id=r.point.family, source="ci", split=r.point.split)
        for r in results
    ]
    text = accuracy_markdown(
        records,
        title=ACCURACY_TITLE,
        intro=ACCURACY_INTRO + f" This table is the CI subset ({len(records)} of the first {CI_POINTS} points of "
        f"`calibration/cpu-matrix.toml` that ran within the budget), written by `tests/calibration/test_accuracy.py`.",
    )
    (ROOT / "artifacts").mkdir(exist_ok=True)
    (ROOT / "artifacts" / "accuracy-ci.md").write_text(text)
    if os.environ.get("GPUPLAN_WRITE_DOCS") == "1":
        (ROOT / "docs" / "accuracy.md").write_text(text)
    worst = max(results, key=lambda r: abs(r.comparison.error_pct))
    assert abs(worst.comparison.error_pct) <= 5.0, f"{worst.point.id} {worst.point.plan}: {worst.comparison}"
    for split in ("tune", "holdout"):
        errors = [r.comparison.error_pct for r in results if r.point.split == split]
        assert errors, f"no {split} point ran"
        assert abs(statistics.median(errors)) <= 2.0, split
        assert statistics.median(abs(e) for e in errors) <= 2.0, split
