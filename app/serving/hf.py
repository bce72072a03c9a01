"""transformers `model.generate()`: weights + DynamicCache + the prefill forward's or the last decode step's peak.

Semantics of transformers 5.24 (src/transformers/generation/utils.py GenerationMixin._sample, cache_utils.py):
generate() sets `logits_to_keep=1`, so the prefill's lm_head runs on the last token only; each step copies
`outputs.logits[:, -1]` to fp32 and the previous step's outputs stay referenced until the next forward returns;
DynamicCache grows by torch.cat. Under torch.inference_mode nothing is kept for a backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.estimate import ALLOCATOR_FRAGMENTATION, CUBLAS_WORKSPACE_BYTES, CUDA_CONTEXT_BYTES, SEGMENT
from app.core.quant import ceil_div, rounded
from app.core.spec import ModelSpec
from app.core.units import BF16, FP32
from app.serving.kv import hf_cache_bytes, hf_cat_transient_bytes
from app.serving.layout import KvLayout
from app.serving.plan import ServingPlan
from app.serving.result import Moment, ServingTerm
from app.serving.weights import peft_adapter_bytes, weight_bytes

TRANSFORMERS = "huggingface/transformers src/transformers"
# the transformers whose generate() and DynamicCache semantics the engine models (and the CPU matrix measured)
TRANSFORMERS_SEMANTICS = "transformers 5.24: generation/utils.py GenerationMixin._sample, cache_utils.py DynamicCache"
GATED_LEAVES = frozenset({"gate_proj", "up_proj", "w1", "w3"})
DENSE_LEAVES = frozenset({"fc1", "c_fc", "dense_h_to_4h"})
# model classes with `_supports_sdpa = False` in transformers 5.24 (softcapping, attention sinks): eager attention
EAGER = frozenset({"gemma2", "gpt_oss"})
# GemmaModel.forward: hidden_states = inputs_embeds * normalizer (a new tensor; the embeddings stay referenced)
SCALED_EMBEDDINGS = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text"})
INT64 = 8
# DeepseekV3TopkRouter scores in fp32 (sigmoid), so grouped_mm_experts_forward weights the rows in fp32
FP32_ROUTER_WEIGHTS = frozenset({"deepseek_v2", "deepseek_v3"})


@dataclass(frozen=True)
class Widths:
    """The widths one GPU computes with: hidden (replicated), and q, kv, MLP intermediate (split over tp)."""

    hidden: int
    q: int
    kv: int
    intermediate: int
    gated: bool
    experts: int
    vocab: int
    rope: int  # rotary cos/sin width per token (the head dim)
    heads: int  # attention heads on this GPU
    eager: bool  # transformers runs eager attention (the model class has no sdpa: Gemma 2, gpt-oss)
    masks: int  # eager: one float mask per attention kind (full, sliding)
    scaled_embeddings: bool  # Gemma multiplies the embeddings by sqrt(hidden) into a new tensor
    top_k: int  # MoE: experts per token
    expert_intermediate: int  # MoE: one expert's intermediate width on this GPU
    dense_layers: bool  # MoE models with dense MLP layers too (DeepSeek's first_k_dense_replace)
    router_weight: int  # bytes of a routing weight: the combine's dtype


def widths(model: ModelSpec, plan: ServingPlan, layout: KvLayout | None = None) -> Widths:
    """Per-GPU widths; the intermediate is the widest MLP of the layers (DeepSeek's dense layers, a fused gate_up)."""
    a, tp = model.arch, plan.tp
    widest = a.intermediate_size
    for g in model.groups:
        if g.in_layers and g.kind == "linear" and (g.leaf in GATED_LEAVES | DENSE_LEAVES):
            widest = max(widest, g.out_features)
        if g.in_layers and g.leaf == "gate_up_proj" and g.kind == "linear":
            widest = max(widest, g.out_features // 2)
    return Widths(
        hidden=a.hidden_size,
        q=ceil_div(a.num_heads * a.head_dim, tp),
        kv=ceil_div(a.num_kv_heads * a.head_dim, tp),
        intermediate=ceil_div(widest, tp),
        gated=a.mlp_gated,
        experts=a.num_experts,
        vocab=a.vocab_size,
        rope=a.head_dim,
        heads=ceil_div(a.num_heads, tp),
        eager=a.model_type in EAGER and not plan.vllm,
        masks=len(set(layout.kinds)) if layout is not None else 1,
        scaled_embeddings=a.model_type in SCALED_EMBEDDINGS,
        top_k=a.experts_per_token,
        expert_intermediate=ceil_div(a.intermediate_size, tp),
        dense_layers=widest > a.intermediate_size or not a.num_experts,
        router_weight=FP32 if a.model_type in FP32_ROUTER_WEIGHTS else BF16,
    )


def forward_transient_bytes(w: Widths, batch: int, q_len: int, kv_len: int) -> int:
    """activation_bytes: the largest moment of one decoder layer's forward over T = batch x q_len tokens
    (first-principles on CUDA; held against the CPU reference's generate()): held through every layer, the
    embeddings (and Gemma's scaled copy) and the layer's input `2·T·h·c` with the rotary cos/sin `2·T·d·c`; then
    the largest of RMSNorm's fp32 copy and square `2·T·h·4`; attention's normed input `T·h·c`, q, rotary
    temporaries and output `4·T·q·c` with k, v `2·T·kv·c` (sdpa/flash: no scores), or eager attention's q,
    K and V repeated to every head `2·b·heads·k·d·c`, the scores, their fp32 softmax and its cast
    `b·heads·q·k·(2c + 4)` and a float mask per attention kind `b·q·k·c`; the MLP's residual and normed input
    `2·T·h·c` with the gated act(gate), up and product `3·T·i·c` (dense `2·T·i·c`), or for MoE layers the
    routed rows' gathered inputs `2·S·h·c` and gate_up projection with its grouped GEMM's copy `2·S·2i·c`
    (S = T·k), or at the combine the rows weighted by the router `2·S·h·r` (r = 4 where the router weights are
    fp32: DeepSeek), beside the fp32 router logits and softmax `2·T·E·4`."""
    c, h, t = BF16, w.hidden, batch * q_len
    held = (3 if w.scaled_embeddings else 2) * rounded(t * h * c) + 2 * rounded(t * w.rope * c)
    norm = 2 * rounded(t * h * FP32)
    attention = rounded(t * h * c) + 4 * rounded(t * w.q * c) + 2 * rounded(t * w.kv * c)
    if w.eager:
        repeated = 2 * rounded(batch * kv_len * w.q * c) if w.q != w.kv else 0
        scores = rounded(batch * w.heads * q_len * kv_len * (2 * c + FP32))
        masks = w.masks * rounded(batch * q_len * kv_len * c)
        attention = max(attention, rounded(t * h * c) + rounded(t * w.q * c) + repeated + scores + masks)
    mlp = 2 * rounded(t * h * c) + (3 if w.gated else 2) * rounded(t * w.intermediate * c)
    if w.experts:  # integrations/moe.py grouped_mm_experts_forward over S = T x k routed rows
        routed = t * w.top_k
        gate_up = 2 * rounded(routed * 2 * w.expert_intermediate * c)
        combine = 2 * rounded(routed * h * w.router_weight)  # weighted rows and their un-permuted copy
        moe = 2 * rounded(t * h * c) + 2 * rounded(routed * h * c) + max(gate_up, combine)
        mlp = max(mlp if w.dense_layers else 0, moe + 2 * rounded(t * w.experts * FP32))
    return held + max(norm, attention, mlp)


def logits_bytes(w: Widths, plan: ServingPlan, copies: int) -> int:
    """The last token's logits `b·V·c` (generate() sets logits_to_keep=1) and `copies` fp32 copies `b·V·4`
    (`outputs.logits[:, -1].to(copy=True, dtype=torch.float32)`, the previous step's still referenced)."""
    b = plan.concurrency
    return rounded(b * w.vocab * BF16) + copies * rounded(b * w.vocab * FP32)


def ids_bytes(plan: ServingPlan, length: int) -> int:
    """generate()'s int64 input_ids and attention mask (or the next step's cat of the ids) `2·b·t·8`."""
    return 2 * rounded(plan.concurrency * length * INT64)


def final_length(plan: ServingPlan) -> int:
    """Tokens in the cache after the last forward: the last generated token is never fed back, so context - 1."""
    return max(plan.prompt_tokens, plan.context - 1)


def _term(name: str, nbytes: int, note: str, category: str, **extra: object) -> ServingTerm:
    return ServingTerm.model_validate({"term": name, "bytes": nbytes, "note": note, "category": category, **extra})


CACHE_SOURCE = f"{TRANSFORMERS}/cache_utils.py DynamicLayer/DynamicSlidingWindowLayer.update"


def prefill_terms(w: Widths, plan: ServingPlan, layout: KvLayout) -> list[ServingTerm]:
    """The prefill's peak: the cache of b x prompt tokens with the larger of a layer's forward moment and the
    last token's logits and their fp32 copy, and the ids."""
    b, prompt = plan.concurrency, plan.prompt_tokens
    act = max(forward_transient_bytes(w, b, prompt, prompt), logits_bytes(w, plan, 1)) + ids_bytes(plan, prompt)
    return [
        _term(
            "kv_cache_bytes",
            hf_cache_bytes(layout, plan, prompt),
            f"K and V of {prompt:,} prompt tokens x {b}",
            "kv_cache",
            source=CACHE_SOURCE,
        ),
        _term(
            "activation_bytes",
            act,
            f"prefill of {b * prompt:,} tokens: the largest layer moment or the logits",
            "activations",
            first_principles=plan.device == "cuda",
            source=f"{TRANSFORMERS}/models/*/modeling_*.py",
        ),
    ]


def decode_terms(w: Widths, plan: ServingPlan, layout: KvLayout) -> list[ServingTerm]:
    """The last decode step's peak: the cache at context - 1 tokens with the larger of the logits moment (the
    new fp32 copy beside the previous one) and the last forward's (torch.cat's copy of one layer's K beside
    the previous logits and one token's layer moment), and the ids."""
    b, final = plan.concurrency, final_length(plan)
    logits = logits_bytes(w, plan, 2)
    forward = hf_cat_transient_bytes(layout, plan, final) + logits_bytes(w, plan, 1)
    forward += forward_transient_bytes(w, b, 1, final)
    step = max(logits, forward) + ids_bytes(plan, plan.context)
    where = "the next token's fp32 logits beside the last" if logits >= forward else "torch.cat's new K, the logits"
    return [
        _term(
            "kv_cache_bytes",
            hf_cache_bytes(layout, plan, final),
            f"K and V of {final:,} tokens x {b}",
            "kv_cache",
            source=CACHE_SOURCE,
        ),
        _term(
            "decode_step_bytes",
            step,
            f"last decode step: {where}",
            "activations",
            first_principles=plan.device == "cuda",
            source=f"{TRANSFORMERS}/generation/utils.py _sample",
        ),
    ]


def generate_terms(model: ModelSpec, plan: ServingPlan, layout: KvLayout) -> tuple[Moment, list[ServingTerm]]:
    """The larger of generate()'s two peaks: the prefill of b x (context - output) tokens, and the last decode
    step; weights and adapters are held through both."""
    w = widths(model, plan, layout)
    fixed = [
        _term("weight_bytes", weight_bytes(model, plan), f"served weights ({plan.weights})", "weights"),
        _term("lora_adapter_bytes", peft_adapter_bytes(model, plan), "PEFT adapters in fp32", "adapters"),
    ]
    prefill, decode = prefill_terms(w, plan, layout), decode_terms(w, plan, layout)
    moment: Moment = "prefill" if sum(t.bytes for t in prefill) >= sum(t.bytes for t in decode) else "decode"
    varying = prefill if moment == "prefill" else decode
    return moment, [t for t in fixed + varying if t.bytes] + overhead_terms(plan, fixed + varying)


def overhead_terms(plan: ServingPlan, terms: list[ServingTerm]) -> list[ServingTerm]:
    """CUDA only: the cuBLAS workspace (allocated), allocator fragmentation (reserved, first-principles as the
    training estimate's) and the CUDA context (device), with the training estimate's constants."""
    if plan.device != "cuda":
        return []
    allocated = sum(t.bytes for t in terms) + CUBLAS_WORKSPACE_BYTES
    frag = ceil_div(int(allocated * ALLOCATOR_FRAGMENTATION), SEGMENT) * SEGMENT
    return [
        _term("cublas_workspace_bytes", CUBLAS_WORKSPACE_BYTES, "cuBLAS workspace through the allocator", "overhead"),
        _term(
            "allocator_cache_bytes",
            frag,
            "caching-allocator fragmentation (5 % of allocated)",
            "overhead",
            counted="reserved",
            first_principles=True,
        ),
        _term(
            "cuda_context_bytes",
            CUDA_CONTEXT_BYTES,
            "CUDA context, kernels, library handles",
            "overhead",
            counted="device",
        ),
    ]
