"""The time model held against measured step times: its signed error and the measured MFU on comparable runs.

The store query happens at the edge (app/http/timing.py, as band.py's comparable runs do); this module gets the
measured runs as input, picks the comparable ones for a plan on one tier, widening step by step, and quotes them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, computed_field

from app.core.plan import TrainingPlan
from app.core.spec import ModelSpec
from app.core.throughput import RunSize, step_time
from app.core.tiers import GpuTier

MFU_RUNS = 3
"""From this many comparable runs the check also quotes the run's hours at their median measured MFU."""
SIMILAR = 2.0
"""A run's hidden size and sequence length count as similar within this factor of the plan's."""


class TimedRun(BaseModel):
    """One measured CUDA run with a step time, next to what the time model said for the same plan and tier."""

    model_config = ConfigDict(frozen=True)

    gpu: str = Field(description="The tier the measured device is (app/core/devices.py).")
    method: str
    checkpointing: bool
    seq_len: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    measured_step_s: float = Field(gt=0, description="The run's measured step time (median after the first).")
    model_step_s: float = Field(gt=0, description="The time model's step for the run's own plan and config.")
    flops_per_step: float = Field(gt=0, description="Model FLOPs of one step: FLOPs per token × tokens per step.")
    peak_flops: float = Field(gt=0, description="The tier's dense peak for the plan's dtype, FLOP/s.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def error(self) -> float:
        """(model − measured) / measured: positive when the model is slower than the run was."""
        return time_error(self.model_step_s, self.measured_step_s)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mfu(self) -> float:
        """Measured MFU: model FLOPs per step / (measured step × peak)."""
        return measured_mfu(self.flops_per_step, self.measured_step_s, self.peak_flops)


class TimeCheck(BaseModel):
    """How far the time model was from the comparable measured runs on one tier, or that there are none."""

    model_config = ConfigDict(frozen=True)

    gpu: str
    runs: int = Field(description="Comparable measured runs on this tier.")
    median_error: float | None = Field(None, description="Median signed error (model − measured)/measured.")
    min_error: float | None = None
    max_error: float | None = None
    median_mfu: float | None = Field(None, description="Median measured MFU of those runs.")
    model_mfu: float = Field(description="The MFU the time model assumes.")
    scope: str = Field("", description="Which runs counted as comparable, and how the match was widened.")
    hours_at_measured_mfu: float | None = Field(
        None,
        description="The option's hours with the time model at median_mfu instead of model_mfu (from MFU_RUNS "
        "runs); quoted next to the model's hours, which stay the ones costed and ranked.",
    )
    text: str


def time_error(model_step_s: float, measured_step_s: float) -> float:
    """Signed error of the time model on one run, (model − measured) / measured, as the memory residuals are."""
    return (model_step_s - measured_step_s) / measured_step_s


def measured_mfu(flops_per_step: float, measured_step_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation a run reached: FLOPs per step / (step seconds × peak FLOP/s) (PaLM's MFU, Chowdhery
    et al. 2022, appendix B: the model's FLOPs, not the hardware's, recomputation not counted as useful)."""
    return flops_per_step / (measured_step_s * peak_flops)


def _similar(value: int, target: int) -> bool:
    return target / SIMILAR <= value <= target * SIMILAR


def comparable_runs(
    runs: Sequence[TimedRun], plan: TrainingPlan, hidden_size: int, gpu: str
) -> tuple[list[TimedRun], str]:
    """The runs on `gpu` with the plan's method (never widened), and the closest match that has runs, widened step
    by step as the band's are: checkpointing, sequence length and hidden size (within ×2), then any hidden size,
    then any sequence length, then any checkpointing. Returns the runs and the words for how they were drawn."""
    mine = [r for r in runs if r.gpu == gpu and r.method == plan.method]
    steps = [("checkpointing", "seq", "size"), ("checkpointing", "seq"), ("checkpointing",), ()]
    tests: dict[str, Callable[[TimedRun], bool]] = {
        "checkpointing": lambda r: r.checkpointing == plan.gradient_checkpointing,
        "seq": lambda r: _similar(r.seq_len, plan.seq_len),
        "size": lambda r: _similar(r.hidden_size, hidden_size),
    }
    words = {"checkpointing": "checkpointing", "seq": "sequence length within x2", "size": "hidden size within x2"}
    for kept in steps:
        chosen = [r for r in mine if all(tests[k](r) for k in kept)]
        if chosen:
            dropped = [words[k] for k in words if k not in kept]
            scope = ", ".join([f"{gpu}, same method", *(words[k] for k in kept)])
            return chosen, scope + (f"; widened: any {' and any '.join(dropped)}" if dropped else "")
    return [], ""


def _pct(value: float) -> str:
    return f"{value * 100:+.0f} %".replace("-", "\u2212")


@lru_cache(maxsize=256)
def _unmeasured(gpu: str, model_mfu: float) -> TimeCheck:
    """The check of a tier with no measured runs (one per tier and MFU: every recommendation asks for it)."""
    text = f"no measured step times yet for {gpu}: the time is the model at {model_mfu:.0%} MFU"
    return TimeCheck(gpu=gpu, runs=0, model_mfu=model_mfu, text=text)


def time_check(gpu: str, runs: Sequence[TimedRun], model_mfu: float, scope: str = "") -> TimeCheck:
    """'time model vs N measured runs on H200: median −12 %', or plainly that there are none."""
    if not runs:
        return _unmeasured(gpu, model_mfu)
    errors = sorted(r.error for r in runs)
    mfu = statistics.median(r.mfu for r in runs)
    median = statistics.median(errors)
    plural = "s" * (len(runs) > 1)
    spread = f", {_pct(errors[0])} to {_pct(errors[-1])}" if len(runs) > 1 else ""
    text = (
        f"time model vs {len(runs)} measured run{plural} on {gpu}: median {_pct(median)}{spread} "
        f"(negative: the runs took longer); measured MFU {mfu:.0%} (model: {model_mfu:.0%})"
    )
    return TimeCheck(
        gpu=gpu,
        runs=len(runs),
        median_error=median,
        min_error=errors[0],
        max_error=errors[-1],
        median_mfu=mfu,
        model_mfu=model_mfu,
        scope=scope,
        text=text,
    )


def time_checks(
    runs: Sequence[TimedRun], plan: TrainingPlan, hidden_size: int, gpus: Sequence[str], model_mfu: float
) -> Mapping[str, TimeCheck]:
    """One TimeCheck per tier name, from the comparable runs on that tier."""
    out = {}
    for gpu in gpus:
        chosen, scope = comparable_runs(runs, plan, hidden_size, gpu)
        out[gpu] = time_check(gpu, chosen, model_mfu, scope)
    return out


def at_measured_mfu(
    check: TimeCheck, model: ModelSpec, plan: TrainingPlan, tier: GpuTier, gpus: int, run: RunSize
) -> TimeCheck:
    """The check with the option's hours re-timed at the runs' median measured MFU (step_time with that MFU: the
    memory and interconnect floors unchanged), said in its text; unchanged below MFU_RUNS runs."""
    if check.runs < MFU_RUNS or not check.median_mfu:
        return check
    time = step_time(model, plan.model_copy(update={"gpus": gpus}), tier, gpus, run, mfu=check.median_mfu)
    if time is None:
        return check
    text = f"{check.text}; at the measured MFU this run would take {time.hours:,.1f} h (not applied)"
    return check.model_copy(update={"hours_at_measured_mfu": time.hours, "text": text})
