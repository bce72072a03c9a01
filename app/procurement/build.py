"""The procurement report's numbers: each half's estimate (the Planner's estimate()/recommend(), plan_serving()).

No formula lives here. The training half is judged as a comparison plan is (app/compare/compare.choose: the pinned
tier, else the recommended option); the serving half is plan_serving() with the KV layout its config gives, and
its recommended GPUs priced from the same dated table the training run's cost uses (app/procurement/costs.py). An
error while resolving or planning a half says which half it is about.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from app.compare.compare import Choice, choose
from app.core.prices import PriceTable
from app.core.spec import ModelSpec
from app.errors import GpuplanError
from app.procurement.costs import ServingCost, serving_cost, tier_costs
from app.procurement.halves import ReportAsk, ServingAsk, TrainingAsk, in_half
from app.service import Planned, Planner, load_prices
from app.serving.estimate import plan_serving
from app.serving.result import ServingEstimate
from app.serving.sources import layout_for
from app.settings import Settings


@dataclass(frozen=True)
class TrainingHalf:
    """The training plan: what was asked, its estimate and recommendation, and the GPUs it is judged on."""

    ask: TrainingAsk
    planned: Planned
    choice: Choice


@dataclass(frozen=True)
class ServingHalf:
    """The serving plan: what was asked, the resolved model, its serving estimate, and what its GPUs cost (the
    recommended count, `cost`; the fewest GPUs of every tier that serves it, `tier_costs`)."""

    ask: ServingAsk
    model: ModelSpec
    estimate: ServingEstimate
    cost: ServingCost | None = None
    tier_costs: dict[str, ServingCost] = field(default_factory=dict)


@dataclass(frozen=True)
class Procurement:
    """One purchase: the GPUs that train the adapter and the GPUs that serve it (either half may be absent)."""

    train: TrainingHalf | None
    serve: ServingHalf | None
    serve_months: float = 1.0

    def query(self) -> list[tuple[str, str]]:
        """The permalink's pairs: `train=` and `serve=`, each a query string of its own; serve_months unless 1."""
        train, serve = (self.train.ask if self.train else None), (self.serve.ask if self.serve else None)
        return ReportAsk(train, serve, self.serve_months).query()


def priced(
    est: ServingEstimate, prices: PriceTable, months: float
) -> tuple[ServingCost | None, dict[str, ServingCost]]:
    """The recommended GPUs' cost, and every tier's for the fewest GPUs of it that serve the load."""
    rec = est.recommendations
    if rec is None:
        return None, {}
    cost = None
    if rec.recommended and rec.recommended_gpus:
        cost = serving_cost(rec.recommended, rec.recommended_gpus, prices, months)
    return cost, tier_costs(rec, prices, months)


def serving_half(ask: ServingAsk, model: ModelSpec, settings: Settings, months: float = 1.0) -> ServingHalf:
    """plan_serving() on the resolved model, its KV layout read from its config (catalog, Hub cache, upload), its
    GPUs priced from the settings' price table."""
    layout = layout_for(model, settings=settings)
    est = plan_serving(model, ask.plan, layout, settings.headroom)
    cost, tiers = priced(est, load_prices(settings), months)
    return ServingHalf(ask=ask, model=model, estimate=est, cost=cost, tier_costs=tiers)


def build_sync(ask: ReportAsk, resolve: Callable[[str], ModelSpec], planner: Planner) -> Procurement:
    """The CLI's report: a resolver without an event loop, the Planner's estimates; errors name their half."""
    train, serve = ask.train, ask.serve
    trained = served = None
    if train is not None:
        try:
            planned = planner.plan(resolve(train.entry.model), train.entry.plan, train.run)
        except GpuplanError as exc:
            raise in_half(exc, "train") from None
        trained = TrainingHalf(ask=train, planned=planned, choice=choose(planned, train.entry.gpu))
    if serve is not None:
        try:
            served = serving_half(serve, resolve(serve.model), planner.settings, ask.serve_months)
        except GpuplanError as exc:
            raise in_half(exc, "serve") from None
    return Procurement(train=trained, serve=served, serve_months=ask.serve_months)


async def build_async(ask: ReportAsk, planner: Planner) -> Procurement:
    """The web edges' report: the Planner's resolver (catalog, Hub, uploads) and cached estimates."""
    train, serve = ask.train, ask.serve
    trained = served = None
    if train is not None:
        try:
            model = await planner.resolve(train.entry.model)
            planned = await planner.plan_async(model, train.entry.plan, train.run)
        except GpuplanError as exc:
            raise in_half(exc, "train") from None
        trained = TrainingHalf(ask=train, planned=planned, choice=choose(planned, train.entry.gpu))
    if serve is not None:
        try:
            model = await planner.resolve(serve.model)
            served = await asyncio.to_thread(serving_half, serve, model, planner.settings, ask.serve_months)
        except GpuplanError as exc:
            raise in_half(exc, "serve") from None
    return Procurement(train=trained, serve=served, serve_months=ask.serve_months)
