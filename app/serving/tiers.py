"""Serving over the GPU tiers: what each tier holds at plan.tp, the fewest GPUs that serve the load, and the largest
concurrency and context on a chosen tier (one monotone search, app/core/gpus.first_passing)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from app.core.gpus import GpuTier, budget_bytes, first_passing
from app.core.spec import ModelSpec
from app.serving.kv import blocks_per_request
from app.serving.layout import KvLayout
from app.serving.paged import Pool, kv_pool
from app.serving.plan import MAX_CONCURRENCY, MAX_CONTEXT, MAX_TP, ServingPlan
from app.serving.result import ServingRecommendation, ServingTerm, ServingTierFit, Stretch
from app.serving.terms import serving_terms, tp_refusal


def valid_tps(model: ModelSpec, layout: KvLayout) -> tuple[int, ...]:
    return tuple(tp for tp in range(1, MAX_TP + 1) if tp_refusal(model, layout, tp) is None)


@lru_cache(maxsize=4096)
def _terms(model: ModelSpec, plan: ServingPlan, layout: KvLayout) -> tuple[ServingTerm, ...]:
    return tuple(serving_terms(model, plan, layout)[1])


def device_bytes(terms: tuple[ServingTerm, ...]) -> int:
    return sum(t.bytes for t in terms)


@dataclass(frozen=True)
class Judge:
    """Fit tests for one model and layout on one tier: vLLM's pool, or generate()'s bytes within the budget."""

    model: ModelSpec
    layout: KvLayout
    tier: GpuTier
    headroom: float

    def pool(self, plan: ServingPlan) -> Pool:
        return kv_pool(list(_terms(self.model, plan, self.layout)), self.layout, plan, self.tier.usable_bytes)

    def fits(self, plan: ServingPlan) -> bool:
        if plan.vllm:
            pool = self.pool(plan)
            return pool.slack_short == 0 and pool.bytes > 0 and pool.max_concurrency >= plan.concurrency
        return device_bytes(_terms(self.model, plan, self.layout)) <= budget_bytes(self.tier, self.headroom)

    def max_concurrency(self, plan: ServingPlan) -> int:
        if plan.vllm:
            pool = self.pool(plan)
            return pool.max_concurrency if pool.slack_short == 0 and pool.bytes > 0 else 0
        return largest(lambda n: self.fits(plan.model_copy(update={"concurrency": n})), MAX_CONCURRENCY)[0]


def largest(fits: Callable[[int], bool], limit: int) -> tuple[int, bool]:
    """The largest value in [1, limit] that fits (0 when 1 does not) and whether it stopped at the limit; fits must
    flip once, as the laws hold (memory never falls as concurrency or context grows)."""
    if fits(limit):
        return limit, True
    if not fits(1):
        return 0, False
    return first_passing(lambda v: not fits(v), 1, limit) - 1, False


def tier_fit(judge: Judge, plan: ServingPlan, tps: tuple[int, ...]) -> ServingTierFit:
    """One tier at plan.tp (pool, blocks, capacity) and the fewest tensor-parallel GPUs that serve the load."""
    needed = next((tp for tp in tps if judge.fits(plan.model_copy(update={"tp": tp}))), None)
    fits = judge.fits(plan)
    reason = None if needed else "does not fit even split across the largest tensor-parallel size"
    pool_bytes = blocks = capacity = None
    if plan.vllm:
        pool = judge.pool(plan)
        pool_bytes, blocks = pool.bytes, pool.blocks
        capacity = int(pool.blocks / blocks_per_request(judge.layout, plan) * plan.context)
        if pool.slack_short:
            reason = f"the CUDA context and graphs need {pool.slack_short:,} B more than 1 - gpu_memory_utilization"
    return ServingTierFit(
        gpu=judge.tier.name,
        usable_bytes=judge.tier.usable_bytes,
        fits=fits,
        kv_pool_bytes=pool_bytes,
        num_blocks=blocks,
        kv_capacity_tokens=capacity,
        max_concurrency=judge.max_concurrency(plan),
        gpus_needed=needed,
        reason=None if fits else reason,
    )


def recommend_serving(
    model: ModelSpec, plan: ServingPlan, layout: KvLayout, headroom: float, tiers: tuple[GpuTier, ...]
) -> ServingRecommendation:
    """Every tier judged; the smallest tier that serves the load on plan.tp, else the tier needing fewest GPUs."""
    tps = valid_tps(model, layout)
    fits = [tier_fit(Judge(model, layout, tier, headroom), plan, tps) for tier in tiers]
    fitting = sorted((f for f in fits if f.fits), key=lambda f: (f.usable_bytes, f.gpu))
    if fitting:
        best: ServingTierFit | None = fitting[0]
        count: int | None = plan.tp
    else:
        candidates = sorted((f for f in fits if f.gpus_needed), key=lambda f: (f.gpus_needed or 0, f.usable_bytes))
        best = candidates[0] if candidates else None
        count = best.gpus_needed if best else None
    return ServingRecommendation(
        headroom=headroom, recommended=best.gpu if best else None, recommended_gpus=count, tiers=tuple(fits)
    )


def stretch_on(model: ModelSpec, plan: ServingPlan, layout: KvLayout, tier: GpuTier, headroom: float) -> Stretch:
    """On plan.tp GPUs of `tier`: the most sequences at the plan's context, the longest context at its concurrency."""
    judge = Judge(model, layout, tier, headroom)
    concurrency = judge.max_concurrency(plan)
    context, at_limit = largest(lambda c: judge.fits(plan.model_copy(update={"context": c})), MAX_CONTEXT)
    return Stretch(
        gpu=tier.name,
        tp=plan.tp,
        max_concurrency=concurrency,
        max_context=context,
        at_limit=at_limit or concurrency >= MAX_CONCURRENCY,
    )
