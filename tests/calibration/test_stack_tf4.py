"""The second stack measured for real when its virtualenv is here: cheap points of calibration/cpu-matrix-tf4.toml
run in .venv-tf4 (transformers 4.57.6, `bash calibration/stack-transformers-4.sh`), held to the bounds.

The CI's `./run test` does not make that virtualenv (a second torch install), so there this test is skipped; the
full matrix (33 points) ships as data, re-estimated in test_shipped_accuracy.py, and docs/accuracy-tf4.md has it.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from app.calibration.budget import point_work
from app.calibration.matrix import Point, expand, load_spec, run_points
from app.calibration.stacks import stack_python
from app.errors import CalibrationError
from tests.calibration.conftest import report

SPEC = Path(__file__).resolve().parents[2] / "calibration" / "cpu-matrix-tf4.toml"


def _have_stack() -> bool:
    try:
        stack_python("transformers-4")
    except CalibrationError:
        return False
    return True


def test_a_missing_second_stack_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from app.settings import get_settings

    monkeypatch.setenv("GPUPLAN_STACK4_PYTHON", str(tmp_path / "no-such-python"))
    get_settings.cache_clear()
    try:
        with pytest.raises(CalibrationError, match=r"stack-transformers-4\.sh"):
            stack_python("transformers-4")
    finally:
        get_settings.cache_clear()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not _have_stack(), reason="no transformers-4 virtualenv (bash calibration/stack-transformers-4.sh)")
def test_second_stack_points_within_5_percent(request: pytest.FixtureRequest) -> None:
    points = expand(load_spec(SPEC))
    chosen: list[Point] = []
    for family in ("mixtral", "qwen3_moe", "mistral"):
        for method in ("qlora", "lora"):
            mine = [p for p in points if p.family == family and p.plan.method == method]
            if mine:
                chosen.append(min(mine, key=point_work))
    results = list(run_points(chosen))
    for r in results:
        report(request.config, f"  transformers-4 {r.point.id} {r.comparison.error_pct:+.2f} %")
    assert {r.measurement.env.transformers.split(".")[0] for r in results} == {"4"}
    assert max(abs(r.comparison.error_pct) for r in results) <= 5.0
    assert statistics.median(abs(r.comparison.error_pct) for r in results) <= 2.0
