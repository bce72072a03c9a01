"""The time model against the store's measured step times, per tier: the store query at the edge, the maths in core."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

from app.core.gpus import with_time_checks
from app.core.tiers import find_tier
from app.core.timing import TimeCheck, TimedRun, at_measured_mfu, time_checks
from app.errors import StoreError
from app.http.deps import MeasurementStore
from app.service import Planned
from app.store.models import MeasurementRecord

logger = logging.getLogger(__name__)


def timed_run(record: MeasurementRecord) -> TimedRun | None:
    """A stored run as the time model's comparison needs it; None without a tier or the model's figures."""
    t = record.timing
    if t is None or t.gpu is None or not t.estimated_step_s or not t.flops_per_step or not t.peak_flops:
        return None
    if not t.step_s or record.method is None:
        return None
    seq, hidden = record.plan.get("seq_len"), record.config.get("hidden_size")
    if not isinstance(seq, int) or not isinstance(hidden, int) or seq < 1 or hidden < 1:
        return None  # an uploaded plan or config is free JSON: a run it cannot describe is left out
    return TimedRun(
        gpu=t.gpu,
        method=record.method,
        checkpointing=bool(record.plan.get("gradient_checkpointing")),
        seq_len=seq,
        hidden_size=hidden,
        measured_step_s=t.step_s,
        model_step_s=t.estimated_step_s,
        flops_per_step=t.flops_per_step,
        peak_flops=t.peak_flops,
    )


def checks_from(records: Sequence[MeasurementRecord], planned: Planned) -> Mapping[str, TimeCheck]:
    """The time checks of the tiers that have comparable measured runs (the others keep 'none yet')."""
    rec = planned.recommendation
    runs = [run for record in records if (run := timed_run(record)) is not None]
    if rec is None or rec.time_model is None or not runs:
        return {}
    plan, hidden = planned.estimate.plan, planned.model.arch.hidden_size
    checks = time_checks(runs, plan, hidden, [f.gpu for f in rec.tiers], rec.time_model.mfu)
    options = {f.gpu: f.option for f in rec.tiers if f.option is not None}
    out = {}
    for gpu, check in checks.items():
        tier, option = find_tier(gpu), options.get(gpu)
        if check.runs and tier is not None and option is not None:
            check = at_measured_mfu(check, planned.model, plan, tier, option.gpus, planned.run)
        if check.runs:
            out[gpu] = check
    return out


def timed_records(
    store: MeasurementStore | None, planned: Planned, cached_only: bool = False
) -> tuple[Sequence[MeasurementRecord], str | None]:
    """Verified CUDA runs with step times of the plan's method, and the store's problem if it had one;
    `cached_only` raises NotCached where the store would have to query."""
    if store is None or planned.recommendation is None:
        return (), None
    try:
        return store.timed_runs(planned.estimate.plan.method, cached_only=cached_only), None
    except StoreError as exc:
        logger.warning("no measured step times for the time model: %s", exc)
        return (), exc.detail


def with_measured_times(planned: Planned, records: Sequence[MeasurementRecord]) -> Planned:
    """`planned` with each tier's time check from the comparable measured runs (itself when there are none)."""
    checks = checks_from(records, planned)
    if not checks or planned.recommendation is None:
        return planned
    return replace(planned, recommendation=with_time_checks(planned.recommendation, checks), _exports={})
