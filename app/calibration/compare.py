"""compare(measurement) -> Comparison: a measured peak held against estimate() for exactly the same plan."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from app.calibration.measurement import Measurement
from app.core.estimate import estimate
from app.core.plan import TrainingPlan
from app.core.result import Estimate
from app.core.spec import ModelSpec
from app.store.models import MeasurementRecord, relative_error_pct

# measured phase label suffix -> estimate phase name; the last step's phases carry the optimizer state
_PHASES = {"forward": "forward", "backward": "backward", "optimizer": "optimizer"}


class PhaseError(BaseModel):
    model_config = ConfigDict(frozen=True)

    phase: str
    measured_bytes: int
    estimated_bytes: int
    error_pct: float


class Comparison(BaseModel):
    """How far the estimate was from one measured run, in total and per phase."""

    model_config = ConfigDict(frozen=True)

    measured_peak_bytes: int
    estimated_peak_bytes: int
    error_pct: float
    phases: tuple[PhaseError, ...]


def spec_for(measurement: Measurement, model_id: str) -> ModelSpec:
    """The inventory of the (possibly truncated) config that was measured."""
    from app.inventory.cache import cached_spec

    return cached_spec(measurement.config, model_id=model_id, source="file", cache_dir=None)


def compare_to(measurement: Measurement, model: ModelSpec) -> tuple[Comparison, Estimate]:
    plan = TrainingPlan.model_validate(measurement.plan)
    est = estimate(model, plan)
    measured = measurement.peak_allocated_bytes
    last = f"step{measurement.steps}."
    by_name = {p.name: p.bytes for p in est.phases}
    phases = []
    for phase in measurement.phases:
        if phase.label.startswith(last) and phase.label[len(last) :] in _PHASES:
            name = _PHASES[phase.label[len(last) :]]
            phases.append(
                PhaseError(
                    phase=name,
                    measured_bytes=phase.peak_bytes,
                    estimated_bytes=by_name[name],
                    error_pct=relative_error_pct(by_name[name], phase.peak_bytes),
                )
            )
    total = est.room_peak_bytes  # the ranks' memory has room for every moment sized to it: flatten_peak_bytes
    return (
        Comparison(
            measured_peak_bytes=measured,
            estimated_peak_bytes=total,
            error_pct=relative_error_pct(total, measured),
            phases=tuple(phases),
        ),
        est,
    )


def compare(measurement: Measurement, model_id: str = "calibration") -> Comparison:
    """Hold one measurement against estimate() for the same config, plan and device."""
    return compare_to(measurement, spec_for(measurement, model_id))[0]


def to_record(
    measurement: Measurement,
    comparison: Comparison,
    *,
    model_id: str,
    source: str,
    split: Any = None,
) -> MeasurementRecord:
    """The store's row for one compared measurement (with its step times and the time model, when it has them)."""
    from app.calibration.timing import measurement_timing

    timing = measurement_timing(measurement, spec_for(measurement, model_id)) if measurement.step_s else None
    return MeasurementRecord(
        id=None,
        created_at=measurement.created_at,
        model_id=model_id,
        model_type=measurement.model_type,
        device=measurement.device,
        device_name=measurement.env.device_name,
        layers=measurement.layers,
        plan=measurement.plan,
        config=measurement.config,
        measured_peak_bytes=measurement.peak_allocated_bytes,
        measured_reserved_bytes=measurement.peak_reserved_bytes,
        estimated_peak_bytes=comparison.estimated_peak_bytes,
        phases=[p.model_dump(mode="json") for p in measurement.phases],
        env=_env(measurement),
        source=source,
        split=split,
        timing=timing,
    )


def _env(measurement: Measurement) -> dict[str, Any]:
    """The environment, and for a multi-rank run every rank's peak and which rank was the worst; with offload the
    host RAM's peak and every storage's (device + host), measured_peak_bytes being the device's."""
    env: dict[str, Any] = measurement.env.model_dump(mode="json")
    if measurement.ranks:
        env["rank_peak_bytes"] = [r.peak_allocated_bytes for r in measurement.ranks]
        env["worst_rank"] = measurement.worst_rank
        env["backend"] = "gloo"
    if measurement.host_peak_bytes is not None:  # offload counted by placement: both figures, every rank's too
        env["host_peak_bytes"] = measurement.host_peak_bytes
        env["all_storages_peak_bytes"] = measurement.all_storages_peak_bytes
        if measurement.ranks:
            env["rank_host_peak_bytes"] = [r.host_peak_bytes for r in measurement.ranks]
        env["placement"] = "offload counted by placement (app/calibration/offload.py)"
    return env
