"""KV-cache bytes, exact from the layout: transformers' DynamicCache tensors and vLLM's paged blocks.

Sources (each function names the lines it follows):
transformers 5.24 src/transformers/cache_utils.py (DynamicLayer, DynamicSlidingWindowLayer, Fp8QuantizedLayer);
vllm-project/vllm at v0.33.0 (app/serving/sources.py): vllm/v1/kv_cache_interface.py (AttentionSpec.page_size_bytes,
MLAAttentionSpec, SlidingWindowSpec / ChunkedLocalAttentionSpec.max_admission_blocks_per_request),
vllm/v1/core/kv_cache_planning.py (_get_kv_cache_groups_uniform_page_size, get_kv_cache_config_from_groups) and
vllm/v1/core/kv_cache_utils.py (get_max_concurrency_for_kv_cache_config).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.quant import ceil_div, rounded
from app.serving.layout import KvLayout, LayerKind
from app.serving.plan import KvDType, ServingPlan

KV_DTYPE_BYTES: dict[KvDType, int] = {"bf16": 2, "fp16": 2, "fp8": 1}
# VllmConfig.max_concurrent_batches with async scheduling (on by default in v0.33.0, config/vllm.py) and no
# pipeline parallelism: two batches in flight, so sliding/chunked layers keep 2 x max_num_batched_tokens
IN_FLIGHT_BATCHES = 2


def kv_heads_per_gpu(layout: KvLayout, tp: int) -> int:
    """KV heads one GPU holds: split over tp, replicated when kv_heads < tp (vLLM QKVParallelLinear:
    num_kv_heads = max(1, total_num_kv_heads // tp_size)); MLA's one latent is replicated on every rank."""
    if layout.mla:
        return 1
    return max(1, layout.kv_heads // tp)


def kv_widths(layout: KvLayout, tp: int) -> tuple[int, int]:
    """Elements per token per layer per GPU of the K and V tensors (MLA: the latent kv_nope and k_rot)."""
    if layout.kv_lora_rank is not None:
        return layout.kv_lora_rank, layout.rope_dim or 0
    heads = kv_heads_per_gpu(layout, tp)
    return heads * layout.head_dim, heads * layout.v_head_dim


def token_layer_bytes(layout: KvLayout, plan: ServingPlan) -> int:
    """KV bytes of one token in one layer on one GPU: 2 x kv_heads x head_dim x dtype (K and V), or for MLA one
    latent of kv_lora_rank + qk_rope_head_dim x dtype, no x2 (vLLM MLAAttentionSpec.real_page_size_bytes)."""
    k, v = kv_widths(layout, plan.tp)
    return (k + v) * KV_DTYPE_BYTES[plan.kv_dtype]


# --- transformers: DynamicCache ---------------------------------------------------------------------------------


def hf_layer_bytes(layout: KvLayout, plan: ServingPlan, tokens: int) -> int:
    """One layer's K and V tensors [batch, kv_heads, tokens, head_dim], each a caching-allocator block."""
    k, v = kv_widths(layout, plan.tp)
    e = KV_DTYPE_BYTES[plan.kv_dtype]
    return rounded(plan.concurrency * tokens * k * e) + rounded(plan.concurrency * tokens * v * e)


def hf_kept_tokens(kind: LayerKind, layout: KvLayout, plan: ServingPlan, length: int) -> int:
    """Tokens whose storage a layer keeps after an update at `length` tokens.

    DynamicLayer.update cats every token. DynamicSlidingWindowLayer.update keeps
    `full_key_states[:, :, -sliding_window + 1:, :]`, a view that holds the cat's whole storage: the prompt's
    length after prefill, then min(length, window) once decoding cats one token onto window - 1. The fp8 cache
    (Fp8QuantizedLayer) has no window: every layer keeps every token.
    """
    if kind == "full" or layout.window is None or plan.kv_dtype == "fp8" or length <= plan.prompt_tokens:
        return length
    return min(length, layout.window)


def hf_cache_bytes(layout: KvLayout, plan: ServingPlan, length: int) -> int:
    """kv_cache_bytes (transformers): every layer's K and V at `length` tokens of each of the batch's sequences."""
    return sum(hf_layer_bytes(layout, plan, hf_kept_tokens(kind, layout, plan, length)) for kind in layout.kinds)


def hf_cat_transient_bytes(layout: KvLayout, plan: ServingPlan, length: int) -> int:
    """torch.cat([keys, key_states]) builds a layer's new K while the old one (length - 1 tokens) is still
    referenced: at the last forward, the largest layer's old K (or V)."""
    if length <= plan.prompt_tokens:
        return 0
    k, v = kv_widths(layout, plan.tp)
    e = KV_DTYPE_BYTES[plan.kv_dtype]
    old = max(hf_kept_tokens(kind, layout, plan, length - 1) for kind in layout.kinds)
    return rounded(plan.concurrency * old * max(k, v) * e)


# --- vLLM: paged blocks -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KvGroups:
    """vLLM's KV-cache groups: each block id spans `group_size` layers (one page each); `kinds` has one per group."""

    group_size: int
    kinds: tuple[LayerKind, ...]


def kv_groups(layout: KvLayout) -> KvGroups:
    """_get_kv_cache_groups_uniform_page_size: layers grouped by kind; the group size is the fewest layers of a
    kind (the largest when it is under 1.5 x the fewest), each kind split into cdiv(count, group_size) groups,
    padding the last; one kind only: one group of every layer."""
    order: tuple[LayerKind, ...] = ("full", "sliding", "chunked")
    present = {kind: n for kind in order if (n := layout.count(kind, vllm=True))}
    if len(present) == 1:
        (kind, n), *_ = present.items()
        return KvGroups(group_size=n, kinds=(kind,))
    fewest, most = min(present.values()), max(present.values())
    size = most if most < fewest * 1.5 else fewest
    kinds: list[LayerKind] = []
    for kind, n in present.items():
        kinds += [kind] * ceil_div(n, size)
    return KvGroups(group_size=size, kinds=tuple(kinds))


def page_bytes(layout: KvLayout, plan: ServingPlan) -> int:
    """AttentionSpec.page_size_bytes: block_size tokens of one layer."""
    return plan.block_size * token_layer_bytes(layout, plan)


def group_blocks_per_request(kind: LayerKind, layout: KvLayout, plan: ServingPlan) -> int:
    """max_memory_usage_bytes / page: full cdiv(max_model_len, block); sliding cdiv(min(window - 1 +
    max_in_flight_tokens, max_model_len), block) + 1 (the window may start mid-block); chunked
    cdiv(min(chunk + max_in_flight_tokens, max_model_len), block); max_in_flight_tokens = 2 batches in flight
    x max_num_batched_tokens (VllmConfig.max_in_flight_tokens)."""
    c, b, t = plan.context, plan.block_size, IN_FLIGHT_BATCHES * plan.max_num_batched_tokens
    if kind == "full" or layout.window is None:
        return ceil_div(c, b)
    if kind == "sliding":
        return ceil_div(min(layout.window - 1 + t, c), b) + 1
    return ceil_div(min(layout.window + t, c), b)


def blocks_per_request(layout: KvLayout, plan: ServingPlan) -> int:
    """get_max_concurrency_for_kv_cache_config: a request of max_model_len takes its blocks from every group."""
    return sum(group_blocks_per_request(kind, layout, plan) for kind in kv_groups(layout).kinds)


def block_bytes(layout: KvLayout, plan: ServingPlan) -> int:
    """Memory one block id holds: a page in each of the group_size pool tensors (get_kv_cache_config_from_groups)."""
    return page_bytes(layout, plan) * kv_groups(layout).group_size


def vllm_request_bytes(layout: KvLayout, plan: ServingPlan) -> int:
    """kv_cache_bytes (vLLM) of one sequence of `context` tokens: its blocks x the memory of a block."""
    return blocks_per_request(layout, plan) * block_bytes(layout, plan)


def num_blocks(layout: KvLayout, plan: ServingPlan, pool: int) -> int:
    """get_num_blocks: available_memory // page_size // num_layers (the group size)."""
    return max(0, pool // page_bytes(layout, plan) // kv_groups(layout).group_size)
