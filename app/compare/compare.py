"""A comparison: each plan's estimate and recommendation (the service's, cached) and the GPU it is judged on.

No formula lives here: every number is estimate()'s or recommend()'s (app/core), through the service's Planner.
A plan pinned to a GPU tier (`gpu=`) is judged on that tier's row of the recommendation (the same row the result
page's tiers table shows); otherwise on the recommended option, the cheapest run among the GPUs that can run it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from app.compare.entries import PlanEntry, in_plan
from app.core.gpus import Option, Recommendation, TierFit, budget_bytes, find_tier
from app.core.spec import ModelSpec
from app.core.throughput import RunSize
from app.errors import GpuplanError
from app.service import Planned, Planner


@dataclass(frozen=True)
class Choice:
    """The GPUs one plan is compared on, and what they say about it."""

    gpu: str | None
    gpus: int | None
    fits: bool = False
    pinned: bool = False
    option: Option | None = None
    budget_bytes: int | None = None
    summary: str = ""


def _pinned(rec: Recommendation, gpu: str, plan_gpus: int) -> Choice:
    """The pinned tier's row: fits on the plan's GPUs, or how many it needs, or what stops it."""
    row: TierFit | None = next((t for t in rec.tiers if t.gpu == gpu), None)
    tier = find_tier(gpu)
    budget = budget_bytes(tier, rec.headroom) if tier is not None else None
    if row is None:  # pragma: no cover - the recommendation judges every tier
        return Choice(gpu=gpu, gpus=None, pinned=True, summary=f"{gpu} is not judged for this plan")
    count = row.option.gpus if row.option else row.gpus_needed
    s = "s" if plan_gpus > 1 else ""
    if not row.runs:
        summary = row.cannot_run or f"{gpu} cannot run this plan"
    elif row.fits:
        summary = f"fits on {plan_gpus} × {gpu} ({rec.headroom:.0%} headroom kept free)"
    elif row.gpus_needed:
        summary = f"does not fit on {plan_gpus} GPU{s} of {gpu}; needs {row.gpus_needed} × {gpu}"
    else:
        summary = f"does not fit on {gpu}: {row.reason or 'no count of GPUs suffices'}"
    return Choice(
        gpu=gpu,
        gpus=count,
        fits=row.fits and row.runs,
        pinned=True,
        option=row.option,
        budget_bytes=budget,
        summary=summary,
    )


def _recommended(rec: Recommendation, plan_gpus: int) -> Choice:
    """The recommended option: the cheapest run among the tiers that run the plan."""
    best = rec.options[0] if rec.options else None
    if best is None:
        return Choice(gpu=None, gpus=None, summary="no GPU tier fits and runs this plan")
    tier = find_tier(best.gpu)
    fits = best.gpus == plan_gpus
    how = "fits on" if fits else f"does not fit on {plan_gpus} GPU{'s' if plan_gpus > 1 else ''}; needs"
    return Choice(
        gpu=best.gpu,
        gpus=best.gpus,
        fits=fits,
        option=best,
        budget_bytes=budget_bytes(tier, rec.headroom) if tier is not None else None,
        summary=f"{how} {best.gpus} × {best.gpu} (recommended: {rec.ranking.split(';')[0]})",
    )


def choose(planned: Planned, gpu: str | None) -> Choice:
    """The GPUs a plan is compared on: its pinned tier, else the recommended option (CPU plans: none)."""
    rec, plan = planned.recommendation, planned.estimate.plan
    if rec is None:
        return Choice(gpu=None, gpus=None, summary="CPU reference plan: no GPU recommendation")
    return _pinned(rec, gpu, plan.gpus) if gpu else _recommended(rec, plan.gpus)


@dataclass(frozen=True)
class Column:
    """One plan of the comparison: its number (1-based), what was asked, the answer and the GPUs it is judged on."""

    number: int
    entry: PlanEntry
    planned: Planned
    choice: Choice

    @property
    def label(self) -> str:
        p = self.planned.estimate.plan
        method = f"{p.method} ({p.quant})" if p.method == "qlora" else p.method
        sharding = f", {p.sharding}" if p.sharding != "none" else ""
        return f"{self.number}. {self.planned.model.id}: {method}, {p.gpus} GPU{'s' if p.gpus > 1 else ''}{sharding}"


def run_pairs(run: RunSize) -> list[tuple[str, str]]:
    """train_tokens and epochs where they differ from the defaults (permalinks stay short)."""
    default, pairs = RunSize(), []
    if run.train_tokens != default.train_tokens:
        pairs.append(("train_tokens", str(run.train_tokens)))
    if run.epochs != default.epochs:
        pairs.append(("epochs", f"{run.epochs:g}"))
    return pairs


@dataclass(frozen=True)
class Comparison:
    """2 to 6 plans side by side, on one byte scale, for one run size."""

    columns: tuple[Column, ...]
    run: RunSize

    @property
    def scale_bytes(self) -> int:
        """The shared scale: the largest device bytes or budget of any plan (so every bar is drawn to it)."""
        values = [c.planned.estimate.device_bytes for c in self.columns]
        values += [c.choice.budget_bytes or 0 for c in self.columns]
        return max([*values, 1])

    @property
    def cheapest(self) -> Column | None:
        """The plan whose run costs least on the GPUs it is judged on (the count it needs there)."""
        priced = [
            (c.choice.option.cost_usd, c.number, c)
            for c in self.columns
            if c.choice.option is not None and c.choice.option.cost_usd is not None
        ]
        return min(priced, key=lambda t: (t[0], t[1]))[2] if priced else None

    def query(self) -> list[tuple[str, str]]:
        """The permalink's pairs: one `plan=` per plan, then the run size where it differs from the default."""
        return [("plan", c.entry.query()) for c in self.columns] + run_pairs(self.run)


Resolve = Callable[[str], Awaitable[ModelSpec]]
PlanIt = Callable[[ModelSpec, PlanEntry, RunSize], Awaitable[Planned]]


def _column(number: int, entry: PlanEntry, planned: Planned) -> Column:
    return Column(number=number, entry=entry, planned=planned, choice=choose(planned, entry.gpu))


def compare_sync(
    entries: Sequence[PlanEntry], run: RunSize, resolve: Callable[[str], ModelSpec], planner: Planner
) -> Comparison:
    """The CLI's comparison: a resolver without an event loop, the Planner's estimates; errors name their plan."""
    columns = []
    for number, entry in enumerate(entries, 1):
        try:
            planned = planner.plan(resolve(entry.model), entry.plan, run)
        except GpuplanError as exc:
            raise in_plan(exc, number) from None
        columns.append(_column(number, entry, planned))
    return Comparison(columns=tuple(columns), run=run)


async def compare_async(entries: Sequence[PlanEntry], run: RunSize, resolve: Resolve, plan_it: PlanIt) -> Comparison:
    """Resolve and plan every entry in order; an error says which plan it is about."""
    columns = []
    for number, entry in enumerate(entries, 1):
        try:
            model = await resolve(entry.model)
            planned = await plan_it(model, entry, run)
        except GpuplanError as exc:
            raise in_plan(exc, number) from None
        columns.append(_column(number, entry, planned))
    return Comparison(columns=tuple(columns), run=run)


async def compare_with(planner: Planner, entries: Sequence[PlanEntry], run: RunSize) -> Comparison:
    """The web edges' comparison: the Planner's resolver (catalog or Hub) and its cached estimates."""

    async def plan_it(model: ModelSpec, entry: PlanEntry, run: RunSize) -> Planned:
        return await planner.plan_async(model, entry.plan, run)

    return await compare_async(entries, run, planner.resolve, plan_it)
