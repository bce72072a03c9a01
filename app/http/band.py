"""The uncertainty band of one planned estimate from the store's comparable runs, shared by /plan and the API."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app.core.band import BandAnswer, uncertainty_band
from app.core.plan import TrainingPlan
from app.errors import StoreError
from app.http.deps import MeasurementStore
from app.http.timing import timed_records, with_measured_times
from app.service import Planned, Planner
from app.store.db import NotCached
from app.store.models import ComparableStats

logger = logging.getLogger(__name__)


class AnswerOptions(BaseModel):
    """How the verdict is judged (a query parameter of /plan and /api/v1/estimate, not a plan field)."""

    safe: bool | None = Field(
        None,
        description="Judge the fit on the uncertainty band's upper end instead of the estimate "
        "(default: the GPUPLAN_SAFE_ANSWER setting).",
    )


@dataclass(frozen=True)
class Banded:
    """An estimate with its comparable runs, its band (or why none), and the plan as judged (safe or not)."""

    planned: Planned
    comparable: ComparableStats | None
    band: BandAnswer
    safe: bool
    store_problem: str | None = None


def _layout(plan: TrainingPlan) -> str:
    return f"{plan.gpus} GPU{'s' * (plan.gpus > 1)}" + (f" under {plan.sharding}" if plan.sharding != "none" else "")


def _checkpointing(plan: TrainingPlan) -> str:
    return plan.checkpointing if plan.gradient_checkpointing else "none"


def _find(store: MeasurementStore, planned: Planned, device: str, cached_only: bool) -> ComparableStats | None:
    plan = planned.estimate.plan
    return store.comparable(
        planned.model.arch.model_type,
        plan.method,
        device,
        checkpointing=_checkpointing(plan),
        gpus=plan.gpus,
        sharding=plan.sharding,
        stack=plan.stack,
        cached_only=cached_only,
    )


def _lookup(
    store: MeasurementStore | None, planned: Planned, cached_only: bool
) -> tuple[ComparableStats | None, str | None]:
    """Comparable runs on the plan's device, else (a CUDA plan with none yet) on the CPU reference tracker."""
    if store is None:
        return None, None
    try:
        found = _find(store, planned, planned.estimate.plan.device, cached_only)
        if found is None and planned.estimate.plan.device == "cuda":
            found = _find(store, planned, "cpu", cached_only)
    except StoreError as exc:
        logger.warning("no comparable runs for the band: %s", exc)
        return None, exc.detail
    return found, None


def band_for(
    store: MeasurementStore | None, planned: Planned, cached_only: bool = False
) -> tuple[ComparableStats | None, BandAnswer, str | None]:
    """Comparable runs, the band from their residuals (or why none) and the store's problem, if it had one;
    `cached_only` raises NotCached where the store would have to query."""
    found, problem = _lookup(store, planned, cached_only)
    plan = planned.estimate.plan
    if found is None:
        why = problem or (
            "no measurement store"
            if store is None
            else f"no verified measured {plan.method} run on {_layout(plan)} yet"
        )
        return None, BandAnswer(band=None, reason=why), problem
    band = uncertainty_band(planned.estimate.device_bytes, found.residuals, found.device, found.widened)
    return found, band, problem


def safety_factor(band: BandAnswer, safe: bool) -> float:
    """What the safe answer multiplies every per-GPU estimate by: the band's upper end / the estimate (1: none)."""
    return band.band.safety_factor if safe and band.band is not None else 1.0


async def banded(planner: Planner, store: MeasurementStore | None, planned: Planned, safe: bool | None) -> Banded:
    """The band from comparable verified runs and, when the safe answer is asked for (or set), the recommendation
    judged on the band's upper end; each tier's time model held against the store's measured step times."""
    try:  # the store keeps recent answers: most requests need no worker thread
        found, band, problem = band_for(store, planned, cached_only=True)
    except NotCached:
        found, band, problem = await run_in_threadpool(band_for, store, planned)
    want = planner.settings.safe_answer if safe is None else safe
    factor = safety_factor(band, want)
    judged = planned
    if factor > 1.0 and planned.recommendation is not None:
        judged = await planner.plan_async(planned.model, planned.estimate.plan, planned.run, safety=factor)
    try:
        timed, time_problem = timed_records(store, judged, cached_only=True)
    except NotCached:
        timed, time_problem = await run_in_threadpool(timed_records, store, judged)
    judged = with_measured_times(judged, timed)
    return Banded(planned=judged, comparable=found, band=band, safe=want, store_problem=problem or time_problem)
