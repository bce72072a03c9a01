"""Golden KV-cache anchors, each computed by hand from the published config in the test."""

from __future__ import annotations

from app import catalog
from app.core.spec import ModelSpec
from app.serving.estimate import plan_serving
from app.serving.kv import blocks_per_request, hf_cache_bytes, kv_groups, num_blocks, vllm_request_bytes
from app.serving.layout import KvLayout
from app.serving.plan import ServingPlan
from app.serving.sources import layout_for


def _model(model_id: str) -> tuple[ModelSpec, KvLayout]:
    spec = catalog.load_spec(model_id)
    assert spec is not None
    return spec, layout_for(spec)


def _kv_term(model: ModelSpec, layout: KvLayout, plan: ServingPlan) -> int:
    term = plan_serving(model, plan, layout).term("kv_cache_bytes")
    assert term is not None
    return term.bytes


def test_llama_3_1_8b_bf16_kv_at_8192_tokens_is_one_gib() -> None:
    model, layout = _model("meta-llama/Llama-3.1-8B")
    # 32 layers x 2 (K, V) x 8 KV heads x 128 head_dim x 2 bytes x 8,192 tokens
    by_hand = 32 * 2 * 8 * 128 * 2 * 8192
    assert by_hand == 1_073_741_824
    plan = ServingPlan(context=8192, concurrency=1)
    assert _kv_term(model, layout, plan) == by_hand  # vLLM: 512 blocks x 16 tokens x 32 layers
    assert hf_cache_bytes(layout, plan.model_copy(update={"engine": "transformers"}), 8192) == by_hand


def test_llama_kv_heads_split_over_tp_and_replicate_past_them() -> None:
    model, layout = _model("meta-llama/Llama-3.1-8B")
    full = 1_073_741_824
    assert _kv_term(model, layout, ServingPlan(context=8192, tp=4)) == full // 4  # 2 of 8 KV heads per GPU
    assert _kv_term(model, layout, ServingPlan(context=8192, tp=8)) == full // 8  # 1 per GPU
    assert _kv_term(model, layout, ServingPlan(context=8192, tp=16)) == full // 8  # replicated: still 1 per GPU
    assert _kv_term(model, layout, ServingPlan(context=8192, kv_dtype="fp8")) == full // 2


def test_gemma_2_9b_local_layers_cache_the_window() -> None:
    model, layout = _model("google/gemma-2-9b")
    # config: 42 layers, layer_types alternate sliding/full from layer 0 (Gemma2Config.__post_init__),
    # sliding_window 4096, 8 KV heads x head_dim 256, bf16: 2 x 8 x 256 x 2 = 8,192 bytes per token per layer
    assert layout.count("sliding") == 21 and layout.count("full") == 21 and layout.window == 4096
    per_token_layer = 2 * 8 * 256 * 2
    context = 8192
    # transformers, at the end of decoding: global layers keep 8,192 tokens, local layers min(8,192, 4,096)
    by_hand = 21 * context * per_token_layer + 21 * 4096 * per_token_layer
    assert by_hand == 2_113_929_216
    plan = ServingPlan(engine="transformers", context=context)
    assert hf_cache_bytes(layout, plan, context) == by_hand
    # vLLM (hybrid allocator): 2 groups of 21 layers; a page is 16 tokens x 8,192 B; a request takes
    # cdiv(8192, 16) = 512 full blocks + cdiv(min(4095 + 8192, 8192), 16) + 1 = 513 sliding blocks
    vplan = ServingPlan(context=context, max_num_batched_tokens=8192)
    assert kv_groups(layout).group_size == 21 and sorted(kv_groups(layout).kinds) == ["full", "sliding"]
    assert blocks_per_request(layout, vplan) == 512 + 513
    assert vllm_request_bytes(layout, vplan) == (512 + 513) * 16 * per_token_layer * 21 == 2_821_324_800
    assert _kv_term(model, layout, vplan) == 2_821_324_800
    # a pool of 10 GiB holds 10 GiB // (16 x 8,192) // 21 blocks
    assert num_blocks(layout, vplan, 10 * 2**30) == 10 * 2**30 // (16 * per_token_layer) // 21 == 3900


def test_deepseek_v3_mla_caches_one_latent_per_layer() -> None:
    model, layout = _model("deepseek-ai/DeepSeek-V3")
    # config: 61 layers, kv_lora_rank 512 + qk_rope_head_dim 64 = one 576-wide latent per token per layer, no x2
    # (128 KV heads would be 61 x 2 x 128 x 192 (+128) per token: MLA's cache is 1/57 of that)
    assert layout.latent_dim == 576 and layout.mla
    by_hand = 61 * (512 + 64) * 2 * 8192
    assert by_hand == 575_668_224
    plan = ServingPlan(context=8192)
    assert _kv_term(model, layout, plan) == by_hand
    assert hf_cache_bytes(layout, plan.model_copy(update={"engine": "transformers"}), 8192) == by_hand
    # the latent is replicated on every tensor-parallel rank: per GPU it does not shrink
    assert _kv_term(model, layout, ServingPlan(context=8192, tp=8, weights="fp8")) == by_hand


def test_mistral_slides_in_transformers_and_not_in_vllm() -> None:
    model, layout = _model("mistralai/Mistral-7B-v0.1")
    assert set(layout.kinds) == {"sliding"} and set(layout.vllm_kinds) == {"full"}
    per_token_layer = 2 * 8 * 128 * 2
    plan = ServingPlan(engine="transformers", context=8192)
    assert hf_cache_bytes(layout, plan, 8192) == 32 * 4096 * per_token_layer
    assert _kv_term(model, layout, ServingPlan(context=8192)) == 32 * 8192 * per_token_layer


def test_gemma_3_groups_five_local_layers_to_one_global() -> None:
    _, layout = _model("google/gemma-3-27b-it")
    # 62 layers, every 6th global: 10 full, 52 sliding (window 1024); vLLM groups of 10 layers: 1 full + 6 sliding
    assert layout.count("full") == 10 and layout.count("sliding") == 52
    groups = kv_groups(layout)
    assert groups.group_size == 10 and groups.kinds.count("full") == 1 and groups.kinds.count("sliding") == 6
    plan = ServingPlan(context=32768, max_num_batched_tokens=2048)
    # v0.33.0: a sliding group keeps window - 1 + max_in_flight_tokens (2 async batches x 2048) tokens, +1 block
    assert blocks_per_request(layout, plan) == 2048 + 6 * ((1023 + 2 * 2048 + 15) // 16 + 1)


def test_llama_3_1_8b_weights_are_its_parameters_in_bf16() -> None:
    model, layout = _model("meta-llama/Llama-3.1-8B")
    est = plan_serving(model, ServingPlan(engine="transformers"), layout)
    weights = est.term("weight_bytes")
    assert weights is not None and weights.bytes == 2 * model.num_params == 16_060_522_496


def test_the_pool_follows_vllm_v0_33_budget_arithmetic() -> None:
    """requested = ceil(total x utilization) (v1/worker/utils.py request_memory); the graphs' estimate comes out of
    the pool by default (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1), out of the slack with it off."""
    import math

    from app.core.gpus import find_tier
    from app.serving.kv import block_bytes
    from app.serving.paged import capture_sizes, kv_pool, vllm_terms

    spec, layout = _model("meta-llama/Llama-3.1-8B")
    tier = find_tier("H100 80GB")
    assert tier is not None
    plan = ServingPlan(context=8192)
    terms = vllm_terms(spec, plan, layout)
    by = {t.term: t.bytes for t in terms}
    inside = by["weight_bytes"] + by["activation_peak_bytes"] + by["non_torch_bytes"] + by["cuda_graph_bytes"]
    pool = kv_pool(terms, layout, plan, tier.usable_bytes)
    assert pool.bytes == math.ceil(tier.usable_bytes * 0.9) - inside
    assert pool.blocks == pool.bytes // block_bytes(layout, plan)
    off = plan.model_copy(update={"profile_cudagraphs": False})
    assert (
        kv_pool(vllm_terms(spec, off, layout), layout, off, tier.usable_bytes).bytes
        == pool.bytes + by["cuda_graph_bytes"]
    )
    # capture sizes: the grid up to min(2 x max_num_seqs, 512, max_num_batched_tokens), plus max_num_seqs itself
    sizes = capture_sizes(ServingPlan(max_num_seqs=100))  # top 200: 1, 2, 4, 8..200 by 8, and 100
    assert sizes == tuple(sorted({1, 2, 4, *range(8, 201, 8), 100}))
    assert capture_sizes(ServingPlan(max_num_seqs=3, max_num_batched_tokens=5)) == (1, 2, 3, 4, 5)
