"""The engine's terms for one plan, and the tensor-parallel sizes a model accepts."""

from __future__ import annotations

from app.core.spec import ModelSpec
from app.serving.hf import generate_terms
from app.serving.layout import KvLayout
from app.serving.paged import vllm_terms
from app.serving.plan import ServingPlan
from app.serving.result import Moment, ServingTerm


def serving_terms(model: ModelSpec, plan: ServingPlan, layout: KvLayout) -> tuple[Moment, list[ServingTerm]]:
    """The engine's terms per GPU: vLLM's budget and pool, or generate()'s larger peak."""
    if plan.vllm:
        return "serving", vllm_terms(model, plan, layout)
    return generate_terms(model, plan, layout)


def tp_refusal(model: ModelSpec, layout: KvLayout, tp: int) -> str | None:
    """Why tp GPUs cannot split this model, as vLLM asserts (attention heads divide by tp; KV heads divide by tp
    or tp by them, replicated then), or None."""
    heads, kv = model.arch.num_heads, layout.kv_heads
    if heads % tp:
        return f"{heads} attention heads do not split over tp={tp}"
    if not layout.mla and kv % tp and tp % kv:
        return f"{kv} KV heads do not split over tp={tp} (nor replicate: tp must divide by them)"
    return None
