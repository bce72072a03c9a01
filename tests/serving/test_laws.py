"""Laws the serving estimate obeys (hypothesis): KV grows with context and concurrency; tensor parallelism never
raises per-GPU weights or KV; a tier holds no more sequences as they grow longer."""

from __future__ import annotations

from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from app import catalog
from app.core.gpus import GPU_TIERS
from app.core.spec import ModelSpec
from app.serving.estimate import plan_serving
from app.serving.kv import hf_cache_bytes, vllm_request_bytes
from app.serving.layout import KvLayout
from app.serving.plan import ServingPlan
from app.serving.sources import layout_for
from app.serving.tiers import Judge, valid_tps
from app.serving.weights import weight_bytes

MODELS = st.sampled_from(catalog.catalog_ids())
ENGINES = st.sampled_from(["vllm", "transformers"])
WEIGHTS = st.sampled_from(["bf16", "nf4", "int8", "fp8", "mxfp4"])
KV = st.sampled_from(["bf16", "fp8"])


@cache
def _model(model_id: str) -> tuple[ModelSpec, KvLayout]:
    spec = catalog.load_spec(model_id)
    assert spec is not None
    return spec, layout_for(spec)


def _kv(model: ModelSpec, layout: KvLayout, plan: ServingPlan) -> int:
    if plan.vllm:
        return plan.concurrency * vllm_request_bytes(layout, plan)
    return hf_cache_bytes(layout, plan, plan.context)


@settings(max_examples=80, deadline=None)
@given(MODELS, ENGINES, KV, st.integers(1, 200_000), st.integers(1, 200_000), st.integers(1, 64), st.integers(1, 64))
def test_kv_never_falls_as_context_or_concurrency_grows(
    model_id: str, engine: str, kv: str, c1: int, c2: int, n1: int, n2: int
) -> None:
    model, layout = _model(model_id)
    base = ServingPlan(engine=engine, kv_dtype=kv, output_tokens=1)
    small = base.model_copy(update={"context": min(c1, c2), "concurrency": min(n1, n2)})
    large = base.model_copy(update={"context": max(c1, c2), "concurrency": max(n1, n2)})
    assert _kv(model, layout, small) <= _kv(model, layout, large)
    assert (
        plan_serving(model, small, layout, tiers=()).device_bytes
        <= plan_serving(model, large, layout, tiers=()).device_bytes
    )


@settings(max_examples=80, deadline=None)
@given(MODELS, ENGINES, WEIGHTS, st.integers(0, 8), st.data())
def test_more_tensor_parallelism_never_raises_per_gpu_weights_or_kv(
    model_id: str, engine: str, weights: str, adapters: int, data: st.DataObject
) -> None:
    model, layout = _model(model_id)
    tps = valid_tps(model, layout)
    small, large = sorted(data.draw(st.lists(st.sampled_from(tps), min_size=2, max_size=2)))
    plan = ServingPlan(engine=engine, weights=weights, adapters=adapters, context=4096)
    few, many = (plan.model_copy(update={"tp": tp}) for tp in (small, large))
    assert weight_bytes(model, many) <= weight_bytes(model, few)
    assert _kv(model, layout, many) <= _kv(model, layout, few)
    a, b = (plan_serving(model, p, layout, tiers=()) for p in (few, many))
    assert sum(t.bytes for t in b.breakdown if t.category in ("weights", "adapters", "kv_cache")) <= sum(
        t.bytes for t in a.breakdown if t.category in ("weights", "adapters", "kv_cache")
    )


@settings(max_examples=60, deadline=None)
@given(MODELS, st.sampled_from(GPU_TIERS), st.integers(1, 131_072), st.integers(1, 131_072))
def test_a_tier_holds_no_more_sequences_as_they_grow_longer(model_id: str, tier: object, c1: int, c2: int) -> None:
    model, layout = _model(model_id)
    judge = Judge(model, layout, tier, 0.10)  # type: ignore[arg-type]
    short, long = (ServingPlan(context=c) for c in sorted((c1, c2)))
    assert judge.max_concurrency(long) <= judge.max_concurrency(short)


def test_quantized_weights_are_smaller_than_16_bit() -> None:
    model, _ = _model("meta-llama/Llama-3.1-8B")
    sizes = {w: weight_bytes(model, ServingPlan(weights=w)) for w in ("bf16", "int8", "fp8", "nf4")}
    assert sizes["nf4"] < sizes["int8"] < sizes["bf16"] and sizes["fp8"] < sizes["bf16"]
