"""Value objects of the measurement store and the accuracy maths over them (no SQL here)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, computed_field, field_validator

StoreDevice = Literal["cpu", "cuda"]
Split = Literal["tune", "holdout"]
DEVICES: tuple[str, ...] = ("cpu", "cuda")
UNSPLIT = "unsplit"
"""Key of `AccuracySummary.by_split` for records that belong to neither split."""


INT64_MAX = 2**63 - 1
"""Largest value a BIGINT column (SQLite INTEGER, PostgreSQL bigint) holds."""
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
# Bounds of the free-form JSON fields (plan, config, env, phases): a real record is a few KB.
MAX_JSON_DEPTH = 16
MAX_JSON_NODES = 20_000
MAX_JSON_STRING = 10_000
MAX_PHASES = 64


def json_problem(value: Any, depth: int = 0) -> str | None:
    """Why `value` is not plain, finite, UTF-8-encodable JSON within the bounds above; None when it is.

    Rejects NaN and ±Infinity (Python's json reads them, no JSON column can hold them), integers outside
    int64, lone surrogates in keys or strings (UTF-8 cannot encode them), nesting deeper than
    MAX_JSON_DEPTH and more than MAX_JSON_NODES values. The message never echoes the value.
    """
    stack: list[tuple[Any, int, str]] = [(value, depth, "")]
    nodes = 0
    while stack:
        item, level, where = stack.pop()
        nodes += 1
        if nodes > MAX_JSON_NODES:
            return f"more than {MAX_JSON_NODES} values"
        if level > MAX_JSON_DEPTH:
            return f"nested deeper than {MAX_JSON_DEPTH} levels{where}"
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str) or (bad := _string_problem(key)):
                    return f"a key{where} {bad or 'is not a string'}"
                stack.append((child, level + 1, f" at {ascii(key)[1:-1][:40]}"))
        elif isinstance(item, list | tuple):
            stack.extend((child, level + 1, where) for child in item)
        elif (bad := _scalar_problem(item)) is not None:
            return f"a value{where} {bad}"
    return None


def _string_problem(text: str) -> str | None:
    if len(text) > MAX_JSON_STRING:
        return f"is longer than {MAX_JSON_STRING} characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "holds a lone surrogate (not encodable as UTF-8)"
    return None


def _scalar_problem(item: Any) -> str | None:
    if item is None or isinstance(item, bool):
        return None
    if isinstance(item, int):
        return None if -INT64_MAX - 1 <= item <= INT64_MAX else "is outside the 64-bit integer range"
    if isinstance(item, float):
        return None if math.isfinite(item) else "is NaN or infinite (JSON has no such numbers)"
    if isinstance(item, str):
        return _string_problem(item)
    return f"is a {type(item).__name__}, not a JSON value"


def _plain_json(value: Any) -> Any:
    if (problem := json_problem(value)) is not None:
        raise ValueError(f"not plain JSON: {problem}")
    return value


def _encodable(text: str) -> str:
    if (problem := _string_problem(text)) is not None:
        raise ValueError(f"the text {problem}")
    return text


Bytes = Annotated[int, Strict(), Field(ge=0, le=INT64_MAX)]
"""A byte count: a JSON integer (not true, not 1.0) that fits a BIGINT column."""
JsonObject = Annotated[dict[str, Any], AfterValidator(_plain_json)]
Text = Annotated[str, AfterValidator(_encodable)]


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


Seconds = Annotated[float, Field(ge=0, le=10**7, allow_inf_nan=False)]


class StepTiming(BaseModel):
    """A run's measured step times and, where its device is a gpuplan tier, the time model for the same plan."""

    # strict: JSON numbers only (no true/false or "1.0" read as numbers), as the byte counts are
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    step_s: Seconds = Field(description="Median wall time of the steps after the first (the only one of one).")
    step_times_s: list[Seconds] = Field(default_factory=list, max_length=10_000, description="Every step, in order.")
    tokens_per_step: int = Field(ge=1, le=INT64_MAX, description="batch_size x seq_len x grad_accum_steps.")
    gpu: str | None = Field(None, max_length=100, description="The tier the device is; None: not a tier.")
    estimated_step_s: Seconds | None = Field(
        None,
        description="The time model's step for this plan and config on `gpu` (its MFU), recomputed with the estimate.",
    )
    flops_per_step: float | None = Field(None, ge=0, allow_inf_nan=False, description="Model FLOPs of one step.")
    peak_flops: float | None = Field(None, ge=0, allow_inf_nan=False, description="The tier's dense peak, FLOP/s.")

    def identity(self) -> dict[str, Any]:
        """What was measured (not what the model said): part of the run's fingerprint."""
        return {"step_s": self.step_s, "step_times_s": self.step_times_s, "tokens_per_step": self.tokens_per_step}


class MeasurementRecord(BaseModel):
    """One measured fine-tuning run next to what gpuplan estimated for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Annotated[int, Strict()] | None = Field(
        None, ge=1, le=INT64_MAX, description="Row id; None until stored, and ignored when adding."
    )
    created_at: datetime = Field(
        description="When the run was measured (2000-01-01 to 2100-01-01); stored and returned as UTC."
    )
    model_id: Text = Field(min_length=1, max_length=200, description="Hub id or local name of the model.")
    model_type: Text = Field(min_length=1, max_length=100, description="config.json's model_type, e.g. 'llama'.")
    device: StoreDevice
    device_name: Text | None = Field(None, max_length=200, description="GPU name; None when not known.")
    layers: Annotated[int, Strict()] | None = Field(
        None, ge=1, le=1_000_000, description="Truncated depth that was built, or None for full depth."
    )
    plan: JsonObject = Field(description="The TrainingPlan, dumped to a dict (its 'method' is indexed).")
    config: JsonObject = Field(description="The model config actually measured (after depth truncation).")
    measured_peak_bytes: Bytes = Field(gt=0, description="Highest bytes held by live tensors during the run.")
    measured_reserved_bytes: Bytes | None = Field(
        None, description="Highest bytes reserved by the CUDA caching allocator; None on cpu."
    )
    estimated_peak_bytes: Bytes = Field(description="gpuplan's estimate of the peak for the same plan and config.")
    phases: list[JsonObject] = Field(
        default_factory=list,
        max_length=MAX_PHASES,
        description="Per phase of the run: {label, current_bytes, peak_bytes}.",
    )
    env: JsonObject = Field(
        default_factory=dict, description="torch/transformers/peft/bitsandbytes versions, device name, total memory."
    )
    source: Text = Field(
        min_length=1, max_length=64, description="Where it came from: 'cpu-matrix', 'gpu-h200', 'upload'."
    )
    split: Split | None = Field(None, description="'tune' points calibrate gpuplan, 'holdout' points only judge it.")
    verified: bool = Field(
        False,
        description="Shipped data, the operator's own imports and runs, or uploads an operator accepted "
        "(`gpuplan accept-calibrations`); only verified runs feed the quoted accuracy.",
    )
    timing: StepTiming | None = Field(
        None, description="Measured step times (and the time model for the same plan); None: not recorded."
    )

    @field_validator("created_at")
    @classmethod
    def _as_utc(cls, value: datetime) -> datetime:
        try:
            moment = utc(value)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 has no UTC datetime
            moment = None
        if moment is None or not EARLIEST <= moment < LATEST:
            raise ValueError(f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC)")
        return moment

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

        Leaves out the row id, the source label, the split, the verification and the estimate: re-labelling,
        accepting or re-estimating a run does not make it another run.
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
        if self.timing is not None:  # records without step times keep the fingerprint they always had
            identity["timing"] = self.timing.identity()
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


class SourceSummary(BaseModel):
    """The runs of one source: how many, how many verified, and the accuracy over all of them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    runs: int = Field(ge=1)
    verified_runs: int = Field(ge=0, description="Runs of this source that feed the quoted accuracy.")
    accuracy: AccuracyStats


class AccuracySummary(BaseModel):
    """Accuracy over the verified runs, per device and per split; the unverified runs and each source apart."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    overall: AccuracyStats | None = Field(description="Verified runs only; None when there are none (for the device).")
    by_device: dict[str, AccuracyStats] = Field(
        description="'cpu' / 'cuda' → stats of verified runs; devices without runs are absent."
    )
    by_split: dict[str, AccuracyStats] = Field(
        description=f"'tune' / 'holdout' / '{UNSPLIT}' → stats of verified runs; splits without runs are absent."
    )
    unverified: AccuracyStats | None = Field(
        None, description="Uploaded runs no operator has accepted yet: shown apart, never in the figures above."
    )
    by_source: list[SourceSummary] = Field(default_factory=list, description="Every source on its own.")


class ComparableStats(AccuracyStats):
    """Accuracy on stored runs comparable to a plan, and how wide the comparison had to be drawn."""

    scope: Literal["model_type", "method"] = Field(
        description="'model_type': same model_type, method and device; "
        "'method': no run of that model_type, so same method and device across model types."
    )
    model_type: str | None = Field(description="The model_type matched, or None when scope is 'method'.")
    method: str
    device: StoreDevice
    checkpointing: str | None = Field(
        None, description="Checkpointing matched ('none', 'every-layer', 'sqrt-n'); None when not matched."
    )
    gpus: int = Field(1, description="GPU count matched (never widened).")
    sharding: str = Field("none", description="Sharding matched (never widened).")
    residuals: tuple[float, ...] = Field(
        (), description="Signed residuals (estimated - measured) / measured of the runs, sorted (fractions, not %)."
    )
    widened: str = Field("", description="Which fields matched, and which the search had to let go of.")


def checkpointing_of(plan: dict[str, object]) -> str:
    """A stored plan's checkpointing as one word: 'none', or its strategy (TrainingPlan's defaults when absent)."""
    if plan.get("gradient_checkpointing", True) is False:
        return "none"
    strategy = plan.get("checkpointing", "every-layer")
    return strategy if isinstance(strategy, str) else "every-layer"


DEFAULT_STACK = "transformers-5"  # TrainingPlan.stack's default: runs stored before the field existed


def stack_of(plan: dict[str, object]) -> str:
    """A stored plan's software stack (TrainingPlan's default when absent)."""
    stack = plan.get("stack", DEFAULT_STACK)
    return stack if isinstance(stack, str) else DEFAULT_STACK


def layout_of(plan: dict[str, object]) -> tuple[int, str]:
    """A stored plan's GPU count and sharding (TrainingPlan's defaults, 1 and 'none', when absent)."""
    gpus, sharding = plan.get("gpus", 1), plan.get("sharding", "none")
    return (gpus if isinstance(gpus, int) else 1), (sharding if isinstance(sharding, str) else "none")
