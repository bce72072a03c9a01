"""The CPU calibration matrix in CI: real training steps measured by the tracker, held to the error bounds.

Runs a representative subset of calibration/cpu-matrix.toml (every family, QLoRA/LoRA/full, checkpointing on
and off, seq 128-2048, batch 1-4, rank 8-64, all-linear and attention-only). Every point must be within
+-5 % and the median within +-2 %, in-sample (tune) and out-of-sample (holdout) alike. The table it measured
is written to artifacts/accuracy-ci.md, and to docs/accuracy.md when GPUPLAN_WRITE_DOCS=1.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import pytest

from app.calibration.commands import ACCURACY_INTRO
from app.calibration.compare import to_record
from app.calibration.matrix import expand, load_spec, run_points
from app.calibration.report import ACCURACY_TITLE, accuracy_markdown

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "calibration" / "cpu-matrix.toml"
CI_POINTS = 48


@pytest.fixture(scope="module")
def results() -> list:  # type: ignore[type-arg]
    points = expand(load_spec(SPEC))[:CI_POINTS]
    return list(run_points(points))


@pytest.mark.slow
def test_ci_subset_covers_the_matrix(results: list) -> None:  # type: ignore[type-arg]
    plans = [r.point.plan for r in results]
    assert {r.point.family for r in results} == {"llama", "mistral", "qwen2", "gemma", "phi3", "mixtral"}
    assert {p.method for p in plans} == {"qlora", "lora", "full"}
    assert {p.gradient_checkpointing for p in plans} == {True, False}
    assert {r.point.split for r in results} == {"tune", "holdout"}


@pytest.mark.slow
def test_every_point_within_5_percent_and_median_within_2(results: list) -> None:  # type: ignore[type-arg]
    records = [
        to_record(r.measurement, r.comparison, model_id=r.point.family, source="ci", split=r.point.split)
        for r in results
    ]
    text = accuracy_markdown(
        records,
        title=ACCURACY_TITLE,
        intro=ACCURACY_INTRO + f" This table is the CI subset ({len(records)} points of "
        f"`calibration/cpu-matrix.toml`), written by `tests/calibration/test_accuracy.py`.",
    )
    (ROOT / "artifacts").mkdir(exist_ok=True)
    (ROOT / "artifacts" / "accuracy-ci.md").write_text(text)
    if os.environ.get("GPUPLAN_WRITE_DOCS") == "1":
        (ROOT / "docs" / "accuracy.md").write_text(text)
    worst = max(results, key=lambda r: abs(r.comparison.error_pct))
    assert abs(worst.comparison.error_pct) <= 5.0, f"{worst.point.id} {worst.point.plan}: {worst.comparison}"
    for split in ("tune", "holdout"):
        errors = [r.comparison.error_pct for r in results if r.point.split == split]
        assert abs(statistics.median(errors)) <= 2.0, split
        assert statistics.median(abs(e) for e in errors) <= 2.0, split
