"""Value objects of the measurement store and the accuracy maths over them (no SQL here)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator

StoreDevice = Literal["cpu", "cuda"]
Split = Literal["tune", "holdout"]
DEVICES: tuple[str, ...] = ("cpu", "cuda")
UNSPLIT = "unsplit"
"""Key of `AccuracySummary.by_split` for records that belong to neither split."""


def relative_error_pct(estimated_bytes: int, measured_bytes: int) -> float:
    """Signed relative error of an estimate, in percent: positive when gpuplan over-estimated."""
    return 100.0 * (estimated_bytes - measured_bytes) / measured_bytes


def utc(moment: datetime) -> datetime:
    """The same instant as an aware UTC datetime; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: the text stored in the JSON-as-TEXT columns and hashed for fingerprints."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def run_fingerprint(identity: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a run's identifying fields."""
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()


class MeasurementRecord(BaseModel):
    """One measured fine-tuning run next to what gpuplan estimated for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int | None = Field(None, description="Row id; None until stored, and ignored when adding.")
    created_at: datetime = Field(description="When the run was measured; stored and returned as UTC.")
    model_id: str = Field(min_length=1, max_length=200, description="Hub id or local name of the model.")
    model_type: str = Field(min_length=1, max_length=100, description="config.json's model_type, e.g. 'llama'.")
    device: StoreDevice
    device_name: str | None = Field(None, max_length=200, description="GPU name; None when not known.")
    layers: int | None = Field(None, ge=1, description="Truncated depth that was built, or None for full depth.")
    plan: dict[str, Any] = Field(description="The TrainingPlan, dumped to a dict (its 'method' is indexed).")
    config: dict[str, Any] = Field(description="The model config actually measured (after depth truncation).")
    measured_peak_bytes: int = Field(gt=0, description="Highest bytes held by live tensors during the run.")
    measured_reserved_bytes: int | None = Field(
        None, ge=0, description="Highest bytes reserved by the CUDA caching allocator; None on cpu."
    )
    estimated_peak_bytes: int = Field(ge=0, description="gpuplan's estimate of the peak for the same plan and config.")
    phases: list[dict[str, Any]] = Field(
        default_factory=list, description="Per phase of the run: {label, current_bytes, peak_bytes}."
    )
    env: dict[str, Any] = Field(
        default_factory=dict, description="torch/transformers/peft/bitsandbytes versions, device name, total memory."
    )
    source: str = Field(
        min_length=1, max_length=64, description="Where it came from: 'cpu-matrix', 'gpu-h200', 'upload'."
    )
    split: Split | None = Field(None, description="'tune' points calibrate gpuplan, 'holdout' points only judge it.")

    @field_validator("created_at")
    @classmethod
    def _as_utc(cls, value: datetime) -> datetime:
        return utc(value)

    @field_validator("phases")
    @classmethod
    def _phase_keys(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for phase in value:
            missing = {"label", "current_bytes", "peak_bytes"} - phase.keys()
            if missing:
                raise ValueError(f"phase {phase.get('label', '?')!r} lacks {', '.join(sorted(missing))}")
        return value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def error_pct(self) -> float:
        """100 × (estimated − measured) / measured, rounded to 0.01; positive means over-estimated."""
        return round(relative_error_pct(self.estimated_peak_bytes, self.measured_peak_bytes), 2)

    @property
    def method(self) -> str | None:
        """The plan's method ('qlora', 'lora', 'full'), or None when the plan dump lacks it."""
        value = self.plan.get("method")
        return value if isinstance(value, str) else None

    def fingerprint(self) -> str:
        """SHA-256 of what identifies the run itself, so that importing the same file twice adds nothing.

        Leaves out the row id, the source label, the split and the estimate: re-labelling a run or
        re-estimating it does not make it another run.
        """
        identity = {
            "created_at": self.created_at.isoformat(),
            "model_id": self.model_id,
            "model_type": self.model_type,
            "device": self.device,
            "device_name": self.device_name,
            "layers": self.layers,
            "plan": self.plan,
            "config": self.config,
            "measured_peak_bytes": self.measured_peak_bytes,
            "measured_reserved_bytes": self.measured_reserved_bytes,
            "phases": self.phases,
            "env": self.env,
        }
        return run_fingerprint(identity)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, Excel's PERCENTILE.INC).

    The value at position fraction × (n − 1) of the sorted values; needs at least one value.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    position = fraction * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class AccuracyStats(BaseModel):
    """How far estimates were from measured peaks over a group of runs, in percent of the measured peak."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int = Field(ge=1, description="Runs in the group.")
    median_abs_error_pct: float = Field(description="Median of |error|.")
    p90_abs_error_pct: float = Field(description="90th percentile of |error| (linear interpolation).")
    max_abs_error_pct: float = Field(description="Largest |error|.")
    median_error_pct: float = Field(description="Median signed error: positive means gpuplan over-estimates.")

    @classmethod
    def from_errors(cls, errors_pct: Sequence[float]) -> AccuracyStats:
        """Stats over unrounded signed errors; every result is rounded to 0.01 at the end."""
        if not errors_pct:
            raise ValueError("accuracy of no runs")
        signed = sorted(errors_pct)
        absolute = sorted(abs(value) for value in errors_pct)
        return cls(
            count=len(signed),
            median_abs_error_pct=round(percentile(absolute, 0.5), 2),
            p90_abs_error_pct=round(percentile(absolute, 0.9), 2),
            max_abs_error_pct=round(absolute[-1], 2),
            median_error_pct=round(percentile(signed, 0.5), 2),
        )


class AccuracySummary(BaseModel):
    """Accuracy over all stored runs, and per device and per split."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    overall: AccuracyStats | None = Field(description="None when no run is stored (for the device asked).")
    by_device: dict[str, AccuracyStats] = Field(description="'cpu' / 'cuda' → stats; devices without runs are absent.")
    by_split: dict[str, AccuracyStats] = Field(
        description=f"'tune' / 'holdout' / '{UNSPLIT}' → stats; splits without runs are absent."
    )


class ComparableStats(AccuracyStats):
    """Accuracy on stored runs comparable to a plan, and how wide the comparison had to be drawn."""

    scope: Literal["model_type", "method"] = Field(
        description="'model_type': same model_type, method and device; "
        "'method': no run of that model_type, so same method and device across model types."
    )
    model_type: str | None = Field(description="The model_type matched, or None when scope is 'method'.")
    method: str
    device: StoreDevice
