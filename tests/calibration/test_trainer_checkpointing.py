"""Checkpointing every n-th layer and offloaded checkpointing measured for real through transformers.Trainer in CI.

The cheapest point per method of calibration/cpu-matrix-trainer-every2.toml (every_n_layers=2) and of
calibration/cpu-matrix-trainer-offload.toml (activation_checkpointing_enable(offload=True), counted by placement:
app/calibration/offload.py `host_saved_checkpoints`) run through the Trainer and are held to the bounds (+-5 %,
median 2 %); the offloaded runs' host RAM peak must be the estimate's offloaded bytes, and on a deep narrow model
offloading must lower the measured device peak by what the estimate says. The full matrices ship as data
(test_shipped_accuracy.py re-estimates them).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from app.calibration.budget import point_work
from app.calibration.compare import compare_to, spec_for
from app.calibration.harness import run_measurement
from app.calibration.matrix import Point, PointResult, expand, load_spec, run_points
from app.core.plan import TrainingPlan
from tests.calibration.conftest import MachineProbe, report

ROOT = Path(__file__).resolve().parents[2]
EVERY2 = ROOT / "calibration" / "cpu-matrix-trainer-every2.toml"
OFFLOAD = ROOT / "calibration" / "cpu-matrix-trainer-offload.toml"
# 8 narrow layers, a 512-token vocabulary and 512-token rows: the checkpointed inputs weigh in the peak
DEEP = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "vocab_size": 512,
}


def _cheapest_per_method(spec: Path) -> list[Point]:
    best: dict[str, Point] = {}
    for point in expand(load_spec(spec)):
        method = point.plan.method
        if method not in best or point_work(point) < point_work(best[method]):
            best[method] = point
    return [best[m] for m in sorted(best)]


@pytest.fixture(scope="module")
def measured(machine: MachineProbe) -> list[PointResult]:
    points = _cheapest_per_method(EVERY2) + _cheapest_per_method(OFFLOAD)
    return list(run_points(points, fp32_matmuls=machine.fp32_matmuls, loop="trainer"))


def test_the_specs_run_every_method_through_the_trainer_with_their_checkpointing() -> None:
    for spec in (EVERY2, OFFLOAD):
        assert load_spec(spec).loop == "trainer"
        assert {p.plan.method for p in _cheapest_per_method(spec)} == {"qlora", "lora", "full"}
    assert {p.plan.checkpoint_every for p in expand(load_spec(EVERY2))} == {2}
    offloaded = expand(load_spec(OFFLOAD))
    assert all(p.plan.checkpoint_offload for p in offloaded)
    assert {p.plan.checkpoint_every for p in offloaded} == {1, 2} and {p.plan.reentrant for p in offloaded} == {
        False,
        True,
    }


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_n_and_offloaded_checkpointing_within_5_percent_and_median_within_2(
    measured: list[PointResult], request: pytest.FixtureRequest
) -> None:
    for r in measured:
        report(request.config, f"  ran   {r.point.id} {r.point.plan.method} {r.comparison.error_pct:+.2f} %")
    assert {r.measurement.env.loop for r in measured} == {"trainer"}
    worst = max(measured, key=lambda r: abs(r.comparison.error_pct))
    assert abs(worst.comparison.error_pct) <= 5.0, f"{worst.point.id} {worst.point.plan}: {worst.comparison}"
    assert statistics.median(abs(r.comparison.error_pct) for r in measured) <= 2.0


@pytest.mark.slow
def test_offloaded_runs_hold_every_checkpointed_input_in_host_ram_as_estimated(measured: list[PointResult]) -> None:
    offloaded = [r for r in measured if r.point.plan.checkpoint_offload]
    assert len(offloaded) == 3
    for r in offloaded:
        _, est = compare_to(r.measurement, spec_for(r.measurement, r.point.family))
        assert r.measurement.host_peak_bytes == est.offloaded_bytes > 0, r.point.id
        assert r.measurement.all_storages_peak_bytes is not None
        assert r.measurement.all_storages_peak_bytes >= r.measurement.peak_allocated_bytes
    assert all(r.measurement.host_peak_bytes is None for r in measured if not r.point.plan.checkpoint_offload)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_offloading_lowers_the_device_peak_by_what_the_estimate_says(machine: MachineProbe) -> None:
    """QLoRA on the deep model: its 8 checkpointed fp32 layer inputs (4 MiB) are 14 % of the device peak."""
    peaks = {}
    for offload in (False, True):
        plan = TrainingPlan(
            method="qlora",
            device="cpu",
            optimizer="adamw",
            seq_len=512,
            rank=8,
            dropout=0.0,
            checkpoint_offload=offload,
        )
        m = run_measurement(DEEP, plan, steps=2, fp32_matmuls=machine.fp32_matmuls, loop="trainer")
        comparison, _ = compare_to(m, spec_for(m, "llama"))
        assert abs(comparison.error_pct) <= 2.0, (offload, comparison)
        peaks[offload] = (m.peak_allocated_bytes, comparison.estimated_peak_bytes)
    measured_drop = peaks[False][0] - peaks[True][0]
    estimated_drop = peaks[False][1] - peaks[True][1]
    assert measured_drop > 0 and abs(measured_drop - estimated_drop) <= 0.1 * measured_drop, peaks
