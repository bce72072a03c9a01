"""Calibration matrices: a TOML spec of model families and plan axes, expanded to points, run and reported."""

from __future__ import annotations

import hashlib
import json
import random
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.calibration.compare import Comparison, compare_to, to_record
from app.calibration.measurement import Loop, Measurement
from app.core.plan import TrainingPlan
from app.errors import InputError

Split = Literal["tune", "holdout"]


class Family(BaseModel):
    """One architecture at reduced width and depth."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: dict[str, Any]
    attention_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    axes: dict[str, list[Any]] = Field(
        default_factory=dict, description="Axis levels that replace the spec's for this family."
    )
    points: int | None = Field(None, ge=1, description="Points of this family (default: an equal share).")
    max_tokens: int = Field(8192, ge=1, description="Cap on seq_len x batch_size (vocab-heavy families need less).")


class MatrixSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    defaults: dict[str, Any] = Field(default_factory=dict, description="Plan fields every point shares.")
    families: dict[str, Family]
    axes: dict[str, list[Any]] = Field(description="Plan fields and the levels each point picks from.")
    points: int = Field(ge=1, le=100_000)
    holdout: float = Field(0.25, ge=0, lt=1, description="Share of points held out of tuning.")
    seed: int = Field(0, description="Seed of the per-point level draws.")
    steps: int = Field(2, ge=1)
    loop: Loop = Field(
        "plain", description="The training loop of every point: plain, transformers.Trainer or trl.SFTTrainer."
    )
    skip: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Plans left out: a point whose plan has every field of one entry is not measured (e.g. what a "
        "matrix was drawn without, so its points stay those it shipped).",
    )


class Point(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    family: str
    config: dict[str, Any]
    plan: TrainingPlan
    split: Split


class PointResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    point: Point
    measurement: Measurement
    comparison: Comparison


def load_spec(path: Path) -> MatrixSpec:
    try:
        return MatrixSpec.model_validate(tomllib.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise InputError(f"no matrix spec at {path}") from exc
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise InputError(f"matrix spec {path} is invalid: {exc}") from exc


def _split(point_id: str, holdout: float) -> Split:
    digest = int(hashlib.sha256(point_id.encode()).hexdigest()[:8], 16)
    return "holdout" if digest / 0xFFFFFFFF < holdout else "tune"


def _supported(name: str, family: Family, plan: TrainingPlan) -> bool:
    """Points the stack itself refuses (e.g. PEFT's ParamWrapper with dropout) are not measured."""
    from app.calibration.distributed import check_distributed_plan
    from app.core.adapters import adapted_groups, fsdp1_refusal
    from app.errors import CalibrationError, PlanError
    from app.inventory.cache import cached_spec

    try:
        spec = cached_spec(family.config, model_id=name, source="file", cache_dir=None)
        adapted_groups(spec, plan)
        if fsdp1_refusal(spec, plan) is not None:  # ParamWrapper under FSDP1: the first forward fails
            return False
        if plan.gpus > 1:
            check_distributed_plan(plan)  # e.g. ZeRO, which the CPU ranks cannot run
    except (PlanError, CalibrationError):
        return False
    return True


def _skipped(plan: TrainingPlan, skip: list[dict[str, Any]]) -> bool:
    return any(all(getattr(plan, k, None) == v for k, v in entry.items()) for entry in skip)


# plan fields added after points were first measured, which change nothing a run measures: left out of a point's
# id so ids (and the tune/holdout split drawn from them) stay those of the shipped measurements
_NOT_IN_ID = frozenset({"strict"})
# Plan fields added after matrices were shipped: left out of a point's id while at their default, so that the
# shipped points keep their ids
_LATER_FIELDS = (
    "reentrant",
    "grad_accum_steps",
    "keep_logits",
    "checkpoint_every",
    "autocast",
    "checkpoint_offload",
    "fused_cross_entropy",
    "packing",
    "fsdp_version",
    "stack",
    "router_aux_loss",
    "fsdp_mixed_precision",
    "fsdp_reduce_dtype",
    "loop",
    "mxfp4",
    "fsdp_backward_prefetch",
    "zero_buckets",
)


def _identity(plan: TrainingPlan) -> str:
    fields = TrainingPlan.model_fields
    later = {name for name in _LATER_FIELDS if getattr(plan, name) == fields[name].default}
    if plan.fsdp_units == "layers" or plan.sharding not in ("fsdp", "fsdp_grad_op") or plan.fsdp_version != 2:
        later.add("fsdp_units")  # the FSDP2 units every matrix before fsdp_units was measured with: ids kept
    return plan.model_dump_json(exclude=set(_NOT_IN_ID) | later)


def expand(spec: MatrixSpec) -> list[Point]:
    """Deterministic points: families round-robin, each axis level drawn by a generator seeded per point."""
    names = sorted(spec.families)
    quota = {n: spec.families[n].points for n in names if spec.families[n].points is not None}
    rotation = [n for n in names if n not in quota] or names
    order = [n for n in names for _ in range(quota.get(n) or 0)]
    order += [rotation[k % len(rotation)] for k in range(max(0, spec.points - len(order)))]
    points: list[Point] = []
    seen: set[str] = set()
    for k, name in enumerate(order):
        family = spec.families[name]
        fields: dict[str, Any] = dict(spec.defaults)
        draw = random.Random(f"{spec.seed}-{k}")
        for axis, levels in sorted({**spec.axes, **family.axes}.items()):
            fields[axis] = draw.choice(levels)
        if fields.get("targets") == "attention":
            fields["targets"] = ",".join(family.attention_targets)
        seq, batch = int(fields.get("seq_len", 2048)), int(fields.get("batch_size", 1))
        while seq * batch > family.max_tokens and batch > 1:
            batch //= 2
        while seq * batch > family.max_tokens and seq > 16:
            seq //= 2
        fields["seq_len"], fields["batch_size"] = seq, batch
        if not fields.get("gradient_checkpointing", True):
            # kinds of checkpointing: levels of those axes only when it is on
            fields.pop("reentrant", None)
            fields.pop("checkpoint_every", None)
            fields.pop("checkpoint_offload", None)
        plan = TrainingPlan(**fields)
        if _skipped(plan, spec.skip) or not _supported(name, family, plan):
            continue
        point_id = name + "-" + hashlib.sha256(_identity(plan).encode()).hexdigest()[:8]
        if point_id in seen:
            continue
        seen.add(point_id)
        points.append(
            Point(
                id=point_id,
                family=name,
                config=family.config,
                plan=plan,
                split=_split(point_id, spec.holdout),
            )
        )
    return points


def run_points(
    points: list[Point],
    *,
    steps: int = 2,
    progress: Callable[[int, int, PointResult], None] | None = None,
    fp32_matmuls: bool = False,
    loop: Loop = "plain",
) -> Iterator[PointResult]:
    """Measure each point and compare it with the estimate (yields as it goes); see run_measurement."""
    from app.calibration.compare import spec_for
    from app.calibration.distributed import measure

    for n, point in enumerate(points, 1):
        if point.plan.device == "cuda":
            import gc

            import torch

            gc.collect()  # the previous point's model and optimizer must not count in this one's peak
            torch.cuda.empty_cache()
        measurement = measure(point.config, point.plan, steps=steps, fp32_matmuls=fp32_matmuls, loop=loop)
        comparison, _ = compare_to(measurement, spec_for(measurement, point.family))
        result = PointResult(point=point, measurement=measurement, comparison=comparison)
        if progress is not None:
            progress(n, len(points), result)
        yield result


def jsonl_line(result: PointResult) -> str:
    """One report line: the point, the measured and estimated peaks, the error and the environment."""
    return json.dumps(
        {
            "id": result.point.id,
            "family": result.point.family,
            "split": result.point.split,
            "plan": result.point.plan.model_dump(mode="json"),
            "measured_peak_bytes": result.comparison.measured_peak_bytes,
            "estimated_peak_bytes": result.comparison.estimated_peak_bytes,
            "error_pct": round(result.comparison.error_pct, 3),
            "phases": [p.model_dump(mode="json") for p in result.comparison.phases],
            "measurement": result.measurement.model_dump(mode="json"),
        }
    )


def store_results(results: list[PointResult], store: Any, source: str) -> list[int]:
    """Persist compared points in one transaction."""
    records = [
        to_record(r.measurement, r.comparison, model_id=r.point.family, source=source, split=r.point.split)
        for r in results
    ]
    return list(store.add_many(records))
