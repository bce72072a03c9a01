"""The procurement report's numbers: each half's estimate (the Planner's estimate()/recommend(), plan_serving()).

No formula lives here. The training half is judged as a comparison plan is (app/compare/compare.choose: the pinned
tier, else the recommended option); the serving half is plan_serving() with the KV layout its config gives. An
error while resolving or planning a half says which half it is about.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from app.compare.compare import Choice, choose
from app.core.spec import ModelSpec
from app.errors import GpuplanError
from app.procurement.halves import ServingAsk, TrainingAsk, in_half
from app.service import Planned, Planner
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
    """The serving plan: what was asked, the resolved model and its serving estimate."""

    ask: ServingAsk
    model: ModelSpec
    estimate: ServingEstimate


@dataclass(frozen=True)
class Procurement:
    """One purchase: the GPUs that train the adapter and the GPUs that serve it (either half may be absent)."""

    train: TrainingHalf | None
    serve: ServingHalf | None

    def query(self) -> list[tuple[str, str]]:
        """The permalink's pairs: `train=` and `serve=`, each a query string of its own."""
        pairs = [("train", self.train.ask.query())] if self.train else []
        return pairs + ([("serve", self.serve.ask.query())] if self.serve else [])


def serving_half(ask: ServingAsk, model: ModelSpec, settings: Settings) -> ServingHalf:
    """plan_serving() on the resolved model, its KV layout read from its config (catalog, Hub cache, upload)."""
    layout = layout_for(model, settings=settings)
    return ServingHalf(ask=ask, model=model, estimate=plan_serving(model, ask.plan, layout, settings.headroom))


def build_sync(
    train: TrainingAsk | None, serve: ServingAsk | None, resolve: Callable[[str], ModelSpec], planner: Planner
) -> Procurement:
    """The CLI's report: a resolver without an event loop, the Planner's estimates; errors name their half."""
    trained = served = None
    if train is not None:
        try:
            planned = planner.plan(resolve(train.entry.model), train.entry.plan, train.run)
        except GpuplanError as exc:
            raise in_half(exc, "train") from None
        trained = TrainingHalf(ask=train, planned=planned, choice=choose(planned, train.entry.gpu))
    if serve is not None:
        try:
            served = serving_half(serve, resolve(serve.model), planner.settings)
        except GpuplanError as exc:
            raise in_half(exc, "serve") from None
    return Procurement(train=trained, serve=served)


async def build_async(train: TrainingAsk | None, serve: ServingAsk | None, planner: Planner) -> Procurement:
    """The web edges' report: the Planner's resolver (catalog, Hub, uploads) and cached estimates."""
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
            served = await asyncio.to_thread(serving_half, serve, model, planner.settings)
        except GpuplanError as exc:
            raise in_half(exc, "serve") from None
    return Procurement(train=trained, serve=served)
