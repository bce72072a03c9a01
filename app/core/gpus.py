"""Recommendations: every tier judged on memory and on what it can run, priced and timed options, the cheapest."""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.capabilities import Blocker, blockers, cannot_run, fixed_plan
from app.core.estimate import GpuCounts, device_bytes
from app.core.layer_split import splits_layers
from app.core.plan import MAX_GPUS, TrainingPlan
from app.core.prices import Price, PriceTable, bundled_prices
from app.core.quant import ceil_div
from app.core.result import Estimate
from app.core.spec import ModelSpec
from app.core.throughput import LABEL, MFU, RunSize, StepTime, StepWork, step_time, step_work
from app.core.tiers import GPU_TIERS, GpuTier, Segment, find_tier
from app.core.timing import TimeCheck, time_check

__all__ = [
    "GPU_TIERS",
    "GpuTier",
    "Option",
    "Recommendation",
    "Segment",
    "TierFit",
    "TimeModel",
    "budget_bytes",
    "find_tier",
    "first_passing",
    "fit_state",
    "judged",
    "recommend",
    "split_counts",
    "with_time_checks",
]

# Ties (equal cost, or no prices) break towards the smaller marketed size, then the older generation: marketed GB,
# not the MiB the driver reports, or an H100 80GB (81,559 MiB) would count as "smaller" than an A100 80GB (81,920).
FitState = Literal["fits", "tight", "does_not_fit"]
TIE_BREAK = "ties go to the smaller marketed size, then the older (cheaper) generation"


class Option(BaseModel):
    """One way to run the plan: a count of GPUs of one tier, its time for the run and, where priced, its cost."""

    model_config = ConfigDict(frozen=True)

    gpu: str
    gpus: int
    hours: float | None = Field(description="Wall-clock hours for the run's tokens (the time model).")
    gpu_hours: float | None
    tokens_per_s: float | None
    cost_usd: float | None = Field(description="price × GPUs × hours; None without an on-demand price.")
    price: Price | None = Field(description="The cheapest on-demand price listed for the GPU, with its date.")
    list_price: Price | None = Field(None, description="The GPU's list (purchase) price, where published.")
    time: StepTime | None = Field(description="The step-time model behind `hours`.")


class TierFit(BaseModel):
    """How one tier holds the plan, whether it can run it, and the option it offers."""

    model_config = ConfigDict(frozen=True)

    gpu: str
    usable_bytes: int
    fits: bool = Field(description="Fits on plan.gpus GPUs of this tier with the headroom kept free.")
    headroom_bytes: int = Field(
        description="Usable bytes left after the estimate on plan.gpus GPUs, before the headroom (negative: short)."
    )
    budget_bytes: int = Field(0, description="usable × (1 − headroom): what the fit verdict compares with.")
    judged_bytes: int = Field(0, description="The per-GPU bytes the verdict judged (the band's upper end if safe).")
    state: FitState = Field(
        "does_not_fit",
        description="fits: within the budget; tight: over the budget but within usable memory (inside the "
        "headroom reserve); does_not_fit: over usable memory — all on plan.gpus GPUs.",
    )
    gpus_needed: int | None = Field(
        description="Fewest GPUs of this tier under the plan's sharding; None if none suffice."
    )
    reason: str | None = Field(None, description="Why gpus_needed is None.")
    runs: bool = Field(True, description="The tier has what the plan needs (bf16, FlashAttention-2, LLM.int8()).")
    cannot_run: str | None = Field(None, description="Why not, e.g. 'cannot run: no bf16 (use fp16, or ...)'.")
    blockers: tuple[Blocker, ...] = ()
    runs_with: dict[str, str] | None = Field(None, description="The plan changes that would make it run.")
    runs_with_fits: bool | None = Field(None, description="Whether the plan with `runs_with` fits plan.gpus GPUs.")
    option: Option | None = Field(None, description="The GPUs this tier needs (plan.gpus if it fits), timed, priced.")
    time_check: TimeCheck | None = Field(
        None, description="The time model against comparable measured step times on this tier, or that there are none."
    )


class TimeModel(BaseModel):
    """What the times and costs assume."""

    model_config = ConfigDict(frozen=True)

    train_tokens: int
    epochs: float
    total_tokens: float
    mfu: float = Field(description="Model FLOPs utilisation assumed of each tier's dense 16-bit peak.")
    label: str = LABEL
    prices: str = Field(description="Where the prices come from: 'bundled', or the price file laid over it.")


class Recommendation(BaseModel):
    model_config = ConfigDict(frozen=True)

    headroom: float = Field(description="Fraction of each tier's usable memory kept free (0.1 = 10 %).")
    recommended: str | None = Field(
        description="The cheapest option for the whole run; without prices, the smallest tier that fits on "
        "plan.gpus, else the tier needing fewest GPUs (only tiers that can run the plan)."
    )
    recommended_gpus: int | None
    tiers: tuple[TierFit, ...]
    ranking: str = Field("", description="How `recommended` was chosen, in one line.")
    options: tuple[Option, ...] = Field((), description="Every tier that runs and fits, cheapest run first.")
    fastest: Option | None = Field(None, description="The option that finishes the run soonest.")
    time_model: TimeModel | None = None
    safety_factor: float = Field(
        1.0, description="What every per-GPU estimate was multiplied by before judging (the safe answer; 1: none)."
    )

    @property
    def quoted_time_checks(self) -> tuple[TimeCheck, ...]:
        """What the outputs quote: the recommended tier's time check (measured runs, or that there are none), then
        every other tier's that has measured runs."""
        checks = [f.time_check for f in self.tiers if f.time_check is not None]
        first = [c for c in checks if c.gpu == self.recommended]
        return tuple(first + [c for c in checks if c.runs and c.gpu != self.recommended])


def fit_state(judged_bytes: int, usable_bytes: int, budget: int) -> FitState:
    """fits within the budget; tight when only the headroom reserve holds it; does_not_fit past usable memory."""
    if judged_bytes <= budget:
        return "fits"
    return "tight" if judged_bytes <= usable_bytes else "does_not_fit"


def judged(nbytes: int, safety_factor: float) -> int:
    """The bytes a verdict compares with the budget: the estimate, or its band's upper end (× the factor)."""
    return nbytes if safety_factor == 1.0 else math.ceil(nbytes * safety_factor)


def budget_bytes(tier: GpuTier, headroom_fraction: float) -> int:
    """The one fit test's budget: a plan fits when device_bytes <= usable × (1 − headroom) (floored: bytes are
    whole, so `device <= int(x)` is `device <= x`)."""
    return int(tier.usable_bytes * (1 - headroom_fraction))


def first_passing(passes: Callable[[int], bool], failing: int, passing: int) -> int:
    """The smallest value in (failing, passing] for which `passes` holds, by bisection.

    The one monotone search of the core: it trusts the laws the core tests hold (per-GPU bytes never rise as GPUs
    are added; memory never falls as batch, sequence or rank grows), so `passes` flips once between the two.
    """
    while passing - failing > 1:
        mid = (failing + passing) // 2
        if passes(mid):
            passing = mid
        else:
            failing = mid
    return passing


@functools.cache  # pure in its two ints, and asked once per tier of every recommendation
def split_counts(num_layers: int, limit: int) -> tuple[int, ...]:
    """The GPU counts worth trying when layers are split (sharding none) with int8 weights, ascending: the worst
    GPU holds ⌈L/n⌉ layers (estimate.gpu_share) and nothing else of the estimate depends on n, so only the fewest
    GPUs for each layers-per-GPU value k, ⌈L/k⌉, can be the answer (16 to 31 GPUs all hold 2 of 32 layers). Other
    plans follow device_map="auto"'s balancing instead (app/core/layer_split.py) and try every count."""
    return tuple(sorted({n for k in range(1, num_layers + 1) if (n := ceil_div(num_layers, k)) <= limit}))


def _gpus_needed(
    plan: TrainingPlan, model: ModelSpec, budget: int, per_gpu: Callable[[int], int], known: Mapping[int, int]
) -> int | None:
    """Fewest GPUs of one tier (its budget) under the plan's sharding; None when no count suffices. `known` holds
    the judged bytes of the counts already estimated (the plan's own, and other tiers' searches): under the
    monotone law they bound the search, so most tiers of a recommendation ask no new count."""

    def fits_on(n: int) -> bool:
        return per_gpu(n) <= budget

    if fits_on(1):
        return 1
    if plan.sharding == "ddp":
        return None  # every DDP replica holds the whole model
    if splits_layers(plan, gpus=2):  # as split, not as asked
        # device_map="auto"'s balancing (app/core/layer_split.py): the worst GPU's bytes are not monotone in n (the
        # last GPU takes what the others' budgets leave), so the fewest GPUs is the first count that fits
        return next((n for n in range(2, min(MAX_GPUS, model.arch.num_layers) + 1) if fits_on(n)), None)
    if plan.sharding == "none":
        counts = split_counts(model.arch.num_layers, min(MAX_GPUS, model.arch.num_layers))
        failing, passing = known_window(counts, budget, known)
        if passing is not None:
            return counts[first_passing(lambda i: fits_on(counts[i]), failing, passing)]
        found = galloping(lambda i: fits_on(counts[i]), failing, len(counts) - 1)
        return None if found is None else counts[found]
    return _sharded_gpus_needed(plan, fits_on)


def _sharded_gpus_needed(plan: TrainingPlan, fits_on: Callable[[int], bool]) -> int | None:
    """The fewest GPUs under ZeRO/FSDP, 2 to MAX_GPUS: bisection, the last count first. Per-GPU bytes there are not
    strictly monotone in the count (a bucket or a padded shard can outgrow what the count saves), so these searches
    keep their fixed probes (the answer a plan gets does not depend on which other tiers were judged before)."""
    counts = range(1, MAX_GPUS + 1)
    own = bisect.bisect_right(counts, plan.gpus) - 1  # the plan's own count (bytes known) halves the search
    if own > 0 and fits_on(counts[own]):
        return counts[first_passing(lambda i: fits_on(counts[i]), 0, own)]
    if not fits_on(counts[-1]):
        return None
    return counts[first_passing(lambda i: fits_on(counts[i]), max(0, own), len(counts) - 1)]


def known_window(counts: Sequence[int], budget: int, known: Mapping[int, int]) -> tuple[int, int | None]:
    """The indices into `counts` the answer lies between by the counts already judged: the largest failing (0 at
    least: one GPU fails when this is asked) and the smallest passing (None when no known count passes)."""
    failing, passing = 0, None
    for n, judged_bytes in known.items():
        i = bisect.bisect_left(counts, n)
        if i == len(counts) or counts[i] != n:
            continue  # not a count of this search (a plan's own count between two split counts)
        if judged_bytes <= budget:
            passing = i if passing is None else min(passing, i)
        else:
            failing = max(failing, i)
    return failing, passing


def galloping(passes: Callable[[int], bool], failing: int, last: int) -> int | None:
    """The smallest value in (failing, last] for which `passes` holds (None when `last` fails): steps of 1, 2, 4, …
    up from `failing`, then bisection (`first_passing`) inside the step that passed. Under the monotone law it
    finds what one bisection over the whole range finds; but each new GPU count costs an estimate, and the fewest
    GPUs are nearly always a step or two above the last count known to fail, so it asks one or two counts where
    the bisection asked four or five (the last count first)."""
    step = 1
    while failing < last:
        probe = min(failing + step, last)
        if passes(probe):
            return first_passing(passes, failing, probe)
        failing, step = probe, step * 2
    return None


class _Judge:
    """Estimates other GPU counts and fixed plans once each, for every tier of one recommendation."""

    def __init__(
        self, model: ModelSpec, est: Estimate, prices: PriceTable, run: RunSize, mfu: float, safety: float = 1.0
    ) -> None:
        self.model, self.est, self.prices, self.run, self.mfu, self.safety = model, est, prices, run, mfu, safety
        self._per_gpu = {est.plan.gpus: judged(est.device_bytes, safety)}  # judged bytes per GPU count
        self._counts = GpuCounts(model, est.plan)
        self._work: dict[int, tuple[TrainingPlan, StepWork]] = {}
        self._fixes: dict[tuple[object, ...], tuple[dict[str, str] | None, int | None]] = {}

    def per_gpu(self, n: int) -> int:
        if n not in self._per_gpu:
            self._per_gpu[n] = judged(self._counts(n), self.safety)
        return self._per_gpu[n]

    def fixed(self, found: tuple[Blocker, ...]) -> tuple[dict[str, str] | None, int | None]:
        """The changes fixed_plan makes and the fixed plan's device bytes (None when nothing fixes it), once per
        set of blockers' fixes (most tiers share none, or bf16's): keyed by the fixes, not by the plan's hash."""
        key = tuple((b.fact, None if b.fix is None else tuple(sorted(b.fix.items()))) for b in found)
        if key not in self._fixes:
            plan = fixed_plan(self.est.plan, found)
            self._fixes[key] = _changes(self.est.plan, plan), None if plan is None else device_bytes(self.model, plan)
        return self._fixes[key]

    def work(self, gpus: int) -> tuple[TrainingPlan, StepWork]:
        """The plan on `gpus` GPUs and its tier-independent step work, once per count."""
        if gpus not in self._work:
            plan = self.est.plan.model_copy(update={"gpus": gpus})
            other = next(iter(self._work.values()), None)  # its FLOPs per token are this count's too
            self._work[gpus] = (plan, step_work(self.model, plan, gpus, other[1] if other else None))
        return self._work[gpus]

    def option(self, tier: GpuTier, gpus: int) -> Option:
        """`gpus` GPUs of `tier`: the time model for the run and the cheapest on-demand price."""
        plan, work = self.work(gpus)
        time = step_time(self.model, plan, tier, gpus, self.run, self.mfu, work)
        price = self.prices.hourly(tier.name)
        hours = time.hours if time else None
        return Option(
            gpu=tier.name,
            gpus=gpus,
            hours=hours,
            gpu_hours=time.gpu_hours if time else None,
            tokens_per_s=time.tokens_per_s if time else None,
            cost_usd=price.usd * gpus * hours if price and hours is not None else None,
            price=price,
            list_price=self.prices.list_price(tier.name),
            time=time,
        )

    def tier_fit(self, tier: GpuTier, headroom_fraction: float) -> TierFit:
        """Memory (fits, GPUs needed), capabilities (what stops the plan, what would not) and the option."""
        plan = self.est.plan
        budget = budget_bytes(tier, headroom_fraction)
        needed = _gpus_needed(plan, self.model, budget, self.per_gpu, self._per_gpu)
        reason = None
        if needed is None:
            reason = (
                "data-parallel replicas each hold the whole model: use fsdp or zero3"
                if plan.sharding == "ddp"
                else "does not fit even split across the maximum number of GPUs"
            )
        found = blockers(tier, plan, self.model.arch.head_dim)
        changes, fixed_bytes = self.fixed(found)
        mine = judged(self.est.device_bytes, self.safety)
        fits = mine <= budget
        count = plan.gpus if fits else needed
        return TierFit(
            gpu=tier.name,
            usable_bytes=tier.usable_bytes,
            fits=fits,
            headroom_bytes=tier.usable_bytes - self.est.device_bytes,
            budget_bytes=budget,
            judged_bytes=mine,
            state=fit_state(mine, tier.usable_bytes, budget),
            gpus_needed=needed,
            reason=reason,
            runs=not found,
            cannot_run=cannot_run(found),
            blockers=found,
            runs_with=changes,
            runs_with_fits=judged(fixed_bytes, self.safety) <= budget if fixed_bytes is not None else None,
            option=self.option(tier, count) if count is not None and not found else None,
            time_check=time_check(tier.name, (), self.mfu),
        )


def _changes(plan: TrainingPlan, fixed: TrainingPlan | None) -> dict[str, str] | None:
    if fixed is None:
        return None
    before, after = plan.model_dump(mode="json"), fixed.model_dump(mode="json")
    return {k: str(v) for k, v in after.items() if before[k] != v}


def recommend(
    model: ModelSpec,
    est: Estimate,
    headroom_fraction: float = 0.10,
    tiers: tuple[GpuTier, ...] = GPU_TIERS,
    *,
    prices: PriceTable | None = None,
    run: RunSize | None = None,
    mfu: float = MFU,
    safety_factor: float = 1.0,
) -> Recommendation:
    """Judge every tier for the plan `est` was made for — fits on plan.gpus, bytes left, fewest GPUs, what it cannot
    run — and rank the tiers that run it by the cost of the whole run (`run` tokens at `prices`).

    `safety_factor` > 1 judges every per-GPU estimate × the factor: the safe answer, the uncertainty band's upper
    end (app/core/band.py)."""
    run = run or RunSize()
    prices = prices if prices is not None else bundled_prices()
    judge = _Judge(model, est, prices, run, mfu, max(1.0, safety_factor))
    fits = [judge.tier_fit(tier, headroom_fraction) for tier in tiers] if est.plan.device == "cuda" else []
    model_of = {t.name: t for t in tiers}
    options = rank_options([f.option for f in fits if f.option is not None], model_of)
    best = options[0] if options else None
    priced = best is not None and best.cost_usd is not None
    timed = [o for o in options if o.hours is not None]
    return Recommendation(
        headroom=headroom_fraction,
        recommended=best.gpu if best else None,
        recommended_gpus=best.gpus if best else None,
        tiers=tuple(fits),
        ranking=(
            f"cheapest run at the listed on-demand prices; {TIE_BREAK}"
            if priced
            else f"no prices for these tiers: fewest GPUs, then smallest tier; {TIE_BREAK}"
        ),
        options=tuple(options),
        fastest=min(timed, key=lambda o: (o.hours or 0.0, o.gpus)) if timed else None,
        time_model=TimeModel(
            train_tokens=run.train_tokens,
            epochs=run.epochs,
            total_tokens=run.total_tokens,
            mfu=mfu,
            prices=prices.origin,
        ),
        safety_factor=judge.safety,
    )


def rank_options(options: list[Option], tiers: dict[str, GpuTier]) -> list[Option]:
    """Priced options by the cost of the whole run, then the unpriced by fewest GPUs and smallest tier; ties
    (TIE_BREAK) go to the smaller marketed size, then the older generation — A100 80GB before H100 80GB."""

    def generation(o: Option) -> tuple[int, int, str]:
        tier = tiers.get(o.gpu) or find_tier(o.gpu)
        return (tier.memory_gb, tier.launched, o.gpu) if tier else (0, 0, o.gpu)

    priced = sorted((o for o in options if o.cost_usd is not None), key=lambda o: (o.cost_usd or 0.0, *generation(o)))
    unpriced = sorted((o for o in options if o.cost_usd is None), key=lambda o: (o.gpus, *generation(o)))
    return priced + unpriced


def with_time_checks(rec: Recommendation, checks: Mapping[str, TimeCheck]) -> Recommendation:
    """The recommendation with each tier's time check replaced by the one measured runs gave (others unchanged)."""
    if not checks:
        return rec
    tiers = tuple(f.model_copy(update={"time_check": checks[f.gpu]}) if f.gpu in checks else f for f in rec.tiers)
    return rec.model_copy(update={"tiers": tiers})
