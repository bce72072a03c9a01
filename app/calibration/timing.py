"""A run's measured step times next to the time model for the same plan, config and tier (stored with the run)."""

from __future__ import annotations

from typing import Any

from app.calibration.measurement import Measurement
from app.core.devices import tier_for_device
from app.core.plan import TrainingPlan
from app.core.spec import ModelSpec
from app.core.throughput import MFU, peak_flops, step_time
from app.store.models import MeasurementRecord, StepTiming


def measurement_timing(measurement: Measurement, model: ModelSpec) -> StepTiming | None:
    """The StepTiming of a run that measured its step time (None when it did not), with the time model."""
    if measurement.step_s is None or measurement.tokens_per_step is None:
        return None
    measured = StepTiming(
        step_s=measurement.step_s,
        step_times_s=list(measurement.step_times_s),
        tokens_per_step=measurement.tokens_per_step,
    )
    env = measurement.env
    return modelled(measured, measurement.device, env.device_name, env.total_memory_bytes, measurement.plan, model)


def record_timing(record: MeasurementRecord, model: ModelSpec) -> StepTiming | None:
    """The record's StepTiming with the time model recomputed by the current model (the measured times kept)."""
    if record.timing is None:
        return None
    memory = record.env.get("total_memory_bytes")
    return modelled(
        record.timing,
        record.device,
        record.device_name,
        memory if isinstance(memory, int) else None,
        record.plan,
        model,
    )


def modelled(
    measured: StepTiming,
    device: str,
    device_name: str | None,
    total_memory_bytes: int | None,
    plan: dict[str, Any],
    model: ModelSpec,
) -> StepTiming:
    """Measured step times with, on a CUDA device that is a gpuplan tier (app/core/devices.py: name and memory),
    the time model for the run's own plan and (truncated) config on that tier at MFU: the model's seconds for the
    measured tokens (tokens_per_step / the model's tokens per second, so every accumulated micro-batch counts),
    the model FLOPs of the step (FLOPs per token × tokens) and the tier's dense peak."""
    bare = measured.model_copy(
        update={"gpu": None, "estimated_step_s": None, "flops_per_step": None, "peak_flops": None}
    )
    tier = tier_for_device(device_name, total_memory_bytes) if device == "cuda" else None
    if tier is None:
        return bare
    training = TrainingPlan.model_validate(plan)
    time = step_time(model, training, tier, 1, mfu=MFU)
    if time is None:
        return bare
    tokens = measured.tokens_per_step
    return bare.model_copy(
        update={
            "gpu": tier.name,
            "estimated_step_s": tokens / time.tokens_per_s,
            "flops_per_step": time.flops_per_token.total * tokens,
            "peak_flops": peak_flops(tier, training),
        }
    )
