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
GATED_LEAVES = frozenset({"gate_proj", "up_proj", "w1", "w3"})
DENSE_LEAVES = frozenset({"fc1", "c_fc", "dense_h_to_4h"})


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


def widths(model: ModelSpec, plan: ServingPlan) -> Widths:
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
    )


def forward_transient_bytes(w: Widths, tokens: int) -> int:
    """activation_bytes: the largest moment of one decoder layer's forward over `tokens` tokens (first-principles):
    the residual stream and the normed input `2·T·h·c`, plus
    RMSNorm's fp32 copy and square `2·T·h·4`; attention's q, rotary temporaries and output `4·T·q·c` with k, v
    `2·T·kv·c` (sdpa/flash: no s x s scores); gated MLP act(gate), up and product `3·T·i·c` (dense `2·T·i·c`);
    MoE the fp32 routing softmax `T·E·4`, the combine buffer `T·h·c` and one expert over every token `3·T·i·c`."""
    c, t, h = BF16, tokens, w.hidden
    stream = 2 * t * h * c
    norm = t * h * c + 2 * t * h * FP32
    attention = stream + 4 * t * w.q * c + 2 * t * w.kv * c
    mlp = stream + (3 if w.gated else 2) * t * w.intermediate * c
    if w.experts:
        mlp += t * w.experts * FP32 + t * h * c
    return max(norm, attention, mlp)


def head_bytes(w: Widths, plan: ServingPlan, tokens: int) -> int:
    """The final norm's output `T·h·c` and the last token's logits `b·V·c` with generate()'s fp32 copy `b·V·4`."""
    b = plan.concurrency
    return rounded(tokens * w.hidden * BF16) + rounded(b * w.vocab * BF16) + rounded(b * w.vocab * FP32)


def decode_logits_bytes(w: Widths, plan: ServingPlan) -> int:
    """logits_bytes at a decode step: the previous step's outputs.logits `b·V·c` and next_token_logits `b·V·4`
    stay referenced while the next forward runs (first-principles)."""
    b = plan.concurrency
    return rounded(b * w.vocab * BF16) + rounded(b * w.vocab * FP32)


def _term(name: str, nbytes: int, note: str, category: str, **extra: object) -> ServingTerm:
    return ServingTerm.model_validate({"term": name, "bytes": nbytes, "note": note, "category": category, **extra})


CACHE_SOURCE = f"{TRANSFORMERS}/cache_utils.py DynamicLayer/DynamicSlidingWindowLayer.update"


def prefill_terms(w: Widths, plan: ServingPlan, layout: KvLayout) -> list[ServingTerm]:
    """The prefill's peak: the cache of b x prompt tokens and the forward's largest moment (a layer or the head)."""
    b, prompt = plan.concurrency, plan.prompt_tokens
    act = max(forward_transient_bytes(w, b * prompt), head_bytes(w, plan, b * prompt))
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
            f"prefill forward of {b * prompt:,} tokens (largest layer moment or the head)",
            "activations",
            first_principles=True,
            source=f"{TRANSFORMERS}/models/*/modeling_*.py forward",
        ),
    ]


def decode_terms(w: Widths, plan: ServingPlan, layout: KvLayout) -> list[ServingTerm]:
    """The last decode step's peak: the cache at `context`, torch.cat's copy of one layer's K, the previous
    step's logits and one token's forward."""
    b = plan.concurrency
    return [
        _term(
            "kv_cache_bytes",
            hf_cache_bytes(layout, plan, plan.context),
            f"K and V of {plan.context:,} tokens x {b}",
            "kv_cache",
            source=CACHE_SOURCE,
        ),
        _term(
            "cache_update_bytes",
            hf_cat_transient_bytes(layout, plan),
            "torch.cat's new K while the old one lives",
            "transient",
            source=CACHE_SOURCE,
        ),
        _term(
            "logits_bytes",
            decode_logits_bytes(w, plan) + forward_transient_bytes(w, b),
            "previous step's logits and fp32 copy, one token's forward",
            "activations",
            first_principles=True,
            source=f"{TRANSFORMERS}/generation/utils.py _sample",
        ),
    ]


def generate_terms(model: ModelSpec, plan: ServingPlan, layout: KvLayout) -> tuple[Moment, list[ServingTerm]]:
    """The larger of generate()'s two peaks: the prefill of b x (context - output) tokens, and the last decode
    step; weights and adapters are held through both."""
    w = widths(model, plan)
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
