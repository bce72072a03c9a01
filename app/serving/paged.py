"""vLLM paged serving: the engine's budget, what it subtracts before the KV pool, and the pool's blocks.

Semantics of vLLM v0.33.0 (app/serving/sources.py names the tag and files; vllm/v1/worker/gpu_worker.py
Worker.determine_available_memory): requested = ceil(total_memory x gpu_memory_utilization) (v1/worker/utils.py
request_memory); the KV pool is requested - non_kv_cache_memory (the weights, the non-torch memory that grew and
the torch peak of profile_run(): utils/mem_utils.py memory_profiling) - the CUDA graphs' profiled estimate, which
VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1 (the default since v0.21.0, vllm/envs.py) subtracts first; with it set
to 0 the graphs come out of the 1 - utilization slack instead. The CUDA context exists before the baseline
snapshot, so it lives in that slack.

Known limitation: on Blackwell (B200) v0.33.0 caps the capture sizes at 1024, not 512; the graph allowance here
uses 512 on every tier (first-principles either way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.core.estimate import CUDA_CONTEXT_BYTES
from app.core.quant import rounded
from app.core.spec import ModelSpec
from app.core.units import BF16, FP32, MIB
from app.serving.hf import Widths, forward_transient_bytes, widths
from app.serving.kv import blocks_per_request, num_blocks, vllm_request_bytes
from app.serving.layout import KvLayout
from app.serving.plan import ServingPlan
from app.serving.result import ServingTerm
from app.serving.sources import VLLM_TAG
from app.serving.weights import vllm_lora_slot_bytes, weight_bytes

VLLM = f"vllm-project/vllm@{VLLM_TAG} vllm"
# Sampler rows of the profile run: bf16 logits, their fp32 copy, top-k/top-p's sorted fp32 values and int64
# indices, and the fp32 probabilities (v1/sample/sampler.py, ops/topk_topp_sampler.py; first-principles)
SAMPLER_BYTES_PER_LOGIT = BF16 + FP32 + FP32 + 8 + FP32
# Non-torch memory that grows during the profile run (cuBLAS/cuDNN handles, NCCL and custom all-reduce
# buffers with tp > 1): an allowance, first-principles until a GPU run measures `non_torch_increase`
NON_TORCH_BYTES = 128 * MIB
NON_TORCH_TP_BYTES = 512 * MIB
# CUDA-graph pool: per captured batch size, graph objects and their private allocations (first-principles)
CUDA_GRAPH_BYTES_PER_SIZE = 4 * MIB
MAX_CAPTURE_SIZE = 512


def capture_sizes(plan: ServingPlan) -> tuple[int, ...]:
    """vllm/config/vllm.py (VllmConfig._set_cudagraph_sizes) defaults: [1, 2, 4] + range(8, 256, 8) +
    range(256, top + 1, 16) with top = min(2 x max_num_seqs, 512, max_num_batched_tokens), plus
    max_num_batched_tokens and max_num_seqs themselves where they are within top."""
    top = min(2 * plan.max_num_seqs, MAX_CAPTURE_SIZE, plan.max_num_batched_tokens)
    sizes = {1, 2, 4, *range(8, 256, 8), *range(256, MAX_CAPTURE_SIZE + 1, 16)}
    sizes |= {plan.max_num_batched_tokens, plan.max_num_seqs}
    return tuple(sorted(s for s in sizes if s <= top))


def profile_peak_bytes(w: Widths, plan: ServingPlan) -> int:
    """activation_peak_bytes: profile_run() runs max_num_batched_tokens through the model (the largest layer moment,
    as for transformers) and then the sampler over min(max_num_seqs, tokens) rows of the vocabulary with the
    hidden states still held (gpu_model_runner.py profile_run, _dummy_run, _dummy_sampler_run)."""
    tokens = plan.max_num_batched_tokens
    forward = forward_transient_bytes(w, 1, tokens, tokens)
    rows = min(plan.max_num_seqs, tokens)
    sampler = rounded(tokens * w.hidden * BF16) + rows * w.vocab * SAMPLER_BYTES_PER_LOGIT
    return max(forward, sampler)


def cuda_graph_bytes(w: Widths, plan: ServingPlan) -> int:
    """cuda_graph_bytes: the graphs share one memory pool that holds the largest captured batch's intermediates,
    plus an allowance per captured size (first-principles; `capture_model()` returns the measured value)."""
    if plan.enforce_eager:
        return 0
    sizes = capture_sizes(plan)
    return forward_transient_bytes(w, max(sizes), 1, 1) + len(sizes) * CUDA_GRAPH_BYTES_PER_SIZE


SOURCES = {
    "weight_bytes": f"{VLLM}/model_executor/layers/linear.py, vocab_parallel_embedding.py",
    "lora_slot_bytes": f"{VLLM}/lora/layers create_lora_weights",
    "activation_peak_bytes": f"{VLLM}/v1/worker/gpu_model_runner.py profile_run",
    "kv_cache_bytes": f"{VLLM}/v1/kv_cache_interface.py, v1/core/kv_cache_planning.py",
    "non_torch_bytes": f"{VLLM}/utils/mem_utils.py memory_profiling non_torch_increase",
    "cuda_graph_bytes": f"{VLLM}/v1/worker/gpu_model_runner.py capture_model",
    "cuda_context_bytes": f"{VLLM}/v1/worker/gpu_worker.py init_device (before the baseline MemorySnapshot)",
}
# terms inside the caching allocator (and vLLM's budget); the rest are device memory outside it
ALLOCATED = frozenset({"weight_bytes", "lora_slot_bytes", "activation_peak_bytes", "kv_cache_bytes"})
FIRST_PRINCIPLES = frozenset({"activation_peak_bytes", "non_torch_bytes", "cuda_graph_bytes", "cuda_context_bytes"})
CATEGORIES = {
    "weight_bytes": "weights",
    "lora_slot_bytes": "adapters",
    "activation_peak_bytes": "activations",
    "kv_cache_bytes": "kv_cache",
}


def vllm_terms(model: ModelSpec, plan: ServingPlan, layout: KvLayout) -> list[ServingTerm]:
    """Per GPU: weights, LoRA slots, the profiled peak and the KV the requested load needs inside the budget;
    the non-torch growth (inside it too), the CUDA graphs and the context (outside it, by default)."""
    w = widths(model, plan)
    blocks = plan.concurrency * blocks_per_request(layout, plan)
    where = " (inside the budget)" if plan.profile_cudagraphs else " (outside the budget)"
    values = {
        "weight_bytes": (weight_bytes(model, plan), f"served weights ({plan.weights})"),
        "lora_slot_bytes": (
            vllm_lora_slot_bytes(model, plan),
            f"{plan.adapters} LoRA slots x rank {plan.adapter_rank}, preallocated",
        ),
        "activation_peak_bytes": (
            profile_peak_bytes(w, plan),
            f"profile_run over {plan.max_num_batched_tokens:,} tokens and the sampler",
        ),
        "kv_cache_bytes": (
            plan.concurrency * vllm_request_bytes(layout, plan),
            f"{blocks:,} blocks of {plan.block_size} tokens for {plan.concurrency} x {plan.context:,} tokens",
        ),
        "non_torch_bytes": (
            NON_TORCH_TP_BYTES if plan.tp > 1 else NON_TORCH_BYTES,
            "non-torch memory grown while profiling (handles, NCCL buffers)",
        ),
        "cuda_graph_bytes": (
            cuda_graph_bytes(w, plan),
            f"CUDA graphs of {len(capture_sizes(plan))} batch sizes{where}",
        ),
        "cuda_context_bytes": (CUDA_CONTEXT_BYTES, "CUDA context (before vLLM's baseline snapshot)"),
    }
    return [
        ServingTerm(
            term=name,
            bytes=nbytes,
            note=note,
            category=CATEGORIES.get(name, "overhead"),
            counted="allocated" if name in ALLOCATED else "device",
            first_principles=name in FIRST_PRINCIPLES,
            source=SOURCES[name],
        )
        for name, (nbytes, note) in values.items()
        if nbytes
    ]


@dataclass(frozen=True)
class Pool:
    """One GPU's KV pool on a tier: bytes (negative when the budget is short), blocks and what they hold."""

    bytes: int
    blocks: int
    max_concurrency: int
    slack_short: int  # bytes the context (and graphs) lack outside the budget; 0 when they fit


def _bytes(terms: list[ServingTerm], name: str) -> int:
    return next((t.bytes for t in terms if t.term == name), 0)


def kv_pool(terms: list[ServingTerm], layout: KvLayout, plan: ServingPlan, usable: int) -> Pool:
    """available_kv_cache_memory = ceil(total x utilization) - weights - LoRA slots - profiled peak - non-torch
    growth - the CUDA graphs (profile_cudagraphs, vLLM's default); blocks = pool // (page x group size)
    (get_kv_cache_config_from_groups); concurrency = blocks // blocks per request. The context (and the graphs
    without profile_cudagraphs) must fit in what the utilization leaves."""
    requested = math.ceil(usable * plan.gpu_memory_utilization)
    graphs = _bytes(terms, "cuda_graph_bytes")
    inside = sum(_bytes(terms, n) for n in ("weight_bytes", "lora_slot_bytes", "activation_peak_bytes"))
    inside += _bytes(terms, "non_torch_bytes") + (graphs if plan.profile_cudagraphs else 0)
    outside = _bytes(terms, "cuda_context_bytes") + (0 if plan.profile_cudagraphs else graphs)
    pool = requested - inside
    blocks = num_blocks(layout, plan, pool)
    return Pool(
        bytes=pool,
        blocks=blocks,
        max_concurrency=blocks // blocks_per_request(layout, plan),
        slack_short=max(0, outside - (usable - requested)),
    )
