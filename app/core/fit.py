"""Inverse planning: the largest micro-batch, longest sequence and highest rank that fit one GPU tier."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.estimate import estimate
from app.core.gpus import GpuTier, budget_bytes, first_passing
from app.core.plan import MAX_BATCH, MAX_RANK, MAX_SEQ_LEN, TrainingPlan
from app.core.spec import ModelSpec
from app.core.units import GIB

Knob = Literal["batch_size", "seq_len", "rank"]

# Each knob's search range: the plan's own input limits (TrainingPlan validates the same bounds).
KNOB_LIMITS: dict[Knob, int] = {"batch_size": MAX_BATCH, "seq_len": MAX_SEQ_LEN, "rank": MAX_RANK}


class FitLimit(BaseModel):
    """The largest value of one plan field that still fits, with the other fields held as planned."""

    model_config = ConfigDict(frozen=True)

    field: Knob
    value: int | None = Field(description="Largest value that fits; None when even the minimum (1) does not.")
    device_bytes: int | None = Field(description="Estimated device bytes at `value` (at 1 when nothing fits).")
    at_limit: bool = Field(False, description="`value` is the input limit itself: the search stopped there.")
    reason: str | None = Field(None, description="Why `value` is None.")
    note: str | None = Field(None, description="A caveat about `value` (e.g. beyond the model's context length).")
    common_value: int | None = Field(
        None,
        description="The nearest value people use at or below `value` (it still fits): sequence length a multiple "
        "of 256 (128, then a power of two, for short ones), rank and batch a power of two.",
    )
    common_rule: str | None = Field(None, description="Which rounding gave `common_value`.")


class FitResult(BaseModel):
    """How far batch, sequence and rank can grow on `gpus` GPUs of one tier."""

    model_config = ConfigDict(frozen=True)

    model: str
    gpu: str
    gpus: int
    headroom: float = Field(description="Fraction of the tier's usable memory kept free (0.1 = 10 %).")
    budget_bytes: int = Field(description="usable bytes × (1 − headroom): the most device bytes a plan may need.")
    batch_size: FitLimit
    seq_len: FitLimit
    rank: FitLimit


def power_of_two_at_most(value: int) -> int:
    """The largest 2^k ≤ value (value ≥ 1)."""
    return 1 << (value.bit_length() - 1)


def common_value(knob: Knob, value: int) -> tuple[int, str]:
    """`value` rounded DOWN to what people configure, so it still fits (memory never falls as a knob shrinks):
    seq_len to a multiple of 256 (of 128 below 256, a power of two below 128); rank and batch to a power of two."""
    if knob == "seq_len":
        for multiple in (256, 128):
            if value >= multiple:
                return value // multiple * multiple, f"a multiple of {multiple}"
    return power_of_two_at_most(value), "a power of two"


def largest_fitting(model: ModelSpec, plan: TrainingPlan, knob: Knob, budget: int) -> FitLimit:
    """Gallop up from 1 (doubling) until a value does not fit, then bisect the boundary (`first_passing`).

    Relies on the law the core tests hold: memory never falls as batch, sequence or rank grows.
    """
    limit = KNOB_LIMITS[knob]
    seen: dict[int, int] = {}

    def need(value: int) -> int:
        if value not in seen:
            seen[value] = estimate(model, plan.model_copy(update={knob: value})).device_bytes
        return seen[value]

    if need(1) > budget:
        return FitLimit(
            field=knob,
            value=None,
            device_bytes=need(1),
            reason=f"even {knob}=1 needs {need(1) / GIB:.2f} GiB, over the {budget / GIB:.2f} GiB budget",
        )
    good = 1
    bad: int | None = None
    while bad is None:
        probe = min(good * 2, limit)
        if probe == good:  # good is the limit
            break
        if need(probe) <= budget:
            good = probe
        else:
            bad = probe
    if bad is not None:
        good = first_passing(lambda value: need(value) > budget, good, bad) - 1
    note = None
    context = model.arch.max_position_embeddings
    if knob == "seq_len" and context is not None and good > context:
        note = f"beyond the model's max_position_embeddings ({context:,}); memory alone would allow it"
    common, rule = common_value(knob, good)
    return FitLimit(
        field=knob,
        value=good,
        device_bytes=need(good),
        at_limit=good == limit,
        note=note,
        common_value=common,
        common_rule=rule,
    )


def fit(model: ModelSpec, plan: TrainingPlan, tier: GpuTier, headroom_fraction: float) -> FitResult:
    """The largest micro-batch, sequence length and LoRA rank that fit `plan.gpus` GPUs of `tier`."""
    budget = budget_bytes(tier, headroom_fraction)
    if plan.uses_lora:
        rank = largest_fitting(model, plan, "rank", budget)
    else:
        rank = FitLimit(
            field="rank", value=None, device_bytes=None, reason="full fine-tuning trains every weight: no LoRA rank"
        )
    return FitResult(
        model=model.id,
        gpu=tier.name,
        gpus=plan.gpus,
        headroom=headroom_fraction,
        budget_bytes=budget,
        batch_size=largest_fitting(model, plan, "batch_size", budget),
        seq_len=largest_fitting(model, plan, "seq_len", budget),
        rank=rank,
    )
