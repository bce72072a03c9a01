"""plan_serving(model, plan) -> ServingEstimate: the one entry point for the serving number."""

from __future__ import annotations

from app.core.gpus import GPU_TIERS, GpuTier, find_tier
from app.core.spec import ModelSpec
from app.errors import InputError
from app.serving.kv import token_layer_bytes
from app.serving.layout import KvLayout, full_layout
from app.serving.plan import VLLM_LORA_RANKS, ServingPlan
from app.serving.result import ServingEstimate
from app.serving.sources import VLLM_FILES, VLLM_TAG, VLLM_VERSION
from app.serving.terms import serving_terms, tp_refusal
from app.serving.tiers import recommend_serving, stretch_on


def plan_serving(
    model: ModelSpec,
    plan: ServingPlan,
    layout: KvLayout | None = None,
    headroom: float = 0.10,
    tiers: tuple[GpuTier, ...] = GPU_TIERS,
) -> ServingEstimate:
    """Memory per GPU of serving `plan` on `model` (the KV layout from its config, else full attention), with the
    fewest GPUs of each tier and, on `plan.gpu`, the largest concurrency and context."""
    layout = layout or full_layout(model.arch)
    check(model, plan, layout)
    moment, terms = serving_terms(model, plan, layout)
    chosen = find_tier(plan.gpu) if plan.gpu else None
    cuda = plan.device == "cuda"
    return ServingEstimate(
        model=model.id,
        revision=model.revision,
        plan=plan,
        params=model.num_params,
        layout=layout,
        breakdown=tuple(terms),
        moment=moment,
        kv_bytes_per_token=token_layer_bytes(layout, plan) * layout.num_layers,
        vllm_version=VLLM_VERSION if plan.vllm else None,
        vllm_tag=VLLM_TAG if plan.vllm else None,
        vllm_files=VLLM_FILES if plan.vllm else (),
        notes=tuple(notes(model, plan, layout)),
        recommendations=recommend_serving(model, plan, layout, headroom, tiers) if cuda else None,
        stretch=stretch_on(model, plan, layout, chosen, headroom) if chosen is not None else None,
    )


def check(model: ModelSpec, plan: ServingPlan, layout: KvLayout) -> None:
    """Plan settings this model or engine refuses, each as a field error (one InputError for all)."""
    errors: list[dict[str, str]] = []
    if (why := tp_refusal(model, layout, plan.tp)) is not None:
        errors.append({"field": "tp", "message": why})
    if plan.vllm and plan.adapters and plan.adapter_rank not in VLLM_LORA_RANKS:
        ranks = ", ".join(map(str, VLLM_LORA_RANKS))
        errors.append({"field": "adapter_rank", "message": f"vLLM's --max-lora-rank takes {ranks}"})
    if plan.vllm and plan.device != "cuda":
        errors.append({"field": "device", "message": "the CPU reference runs the transformers engine only"})
    if plan.device == "cpu" and plan.tp > 1:
        errors.append({"field": "tp", "message": "the CPU reference models one device: set tp to 1"})
    if plan.gpu is not None and find_tier(plan.gpu) is None:
        names = ", ".join(t.name for t in GPU_TIERS)
        errors.append({"field": "gpu", "message": f"unknown GPU tier {plan.gpu!r}; known tiers: {names}"})
    if errors:
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise InputError(detail, errors=errors)


def notes(model: ModelSpec, plan: ServingPlan, layout: KvLayout) -> list[str]:
    """What the user should know about how the plan was read."""
    out: list[str] = []
    limit = model.arch.max_position_embeddings
    if limit and plan.context > limit:
        out.append(
            f"context {plan.context:,} exceeds max_position_embeddings {limit:,}: vLLM refuses it without "
            "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1"
        )
    if plan.output_tokens >= plan.context:
        out.append(f"output_tokens {plan.output_tokens:,} is not less than the context: the prompt is 1 token")
    if layout.source.startswith("arch summary"):
        out.append(
            "the attention layout (sliding windows, MLA) is read from the model's config.json, and this server "
            "keeps none for this model: it is costed as full attention on every layer"
        )
    if plan.vllm and layout.kinds != layout.vllm_kinds:
        out.append(
            "transformers slides every layer over the config's sliding_window, vLLM's model code only the "
            "layers layer_types marks: vLLM caches full attention here"
        )
    if plan.vllm and plan.concurrency > plan.max_num_seqs:
        out.append(
            f"vLLM runs at most max_num_seqs={plan.max_num_seqs} sequences per step: raise --max-num-seqs "
            f"to serve {plan.concurrency} at once"
        )
    if plan.vllm and model.arch.num_experts and plan.adapters:
        out.append("vLLM LoRA slots are counted on the dense linears; fused MoE experts get none here")
    if plan.weights == "mxfp4" and not any(len(p.shape) == 3 for g in model.groups for p in g.params):
        out.append("mxfp4 quantizes fused MoE experts only: this model has none, so its weights are 16-bit")
    if not plan.vllm and plan.kv_dtype == "fp8":
        out.append("transformers' fp8 cache (Fp8QuantizedLayer) keeps every layer's whole context: no sliding window")
    if layout.kinds != layout.vllm_kinds or layout.window is not None:
        kinds = sorted(set(layout.vllm_kinds if plan.vllm else layout.kinds))
        out.append(f"KV layout: {', '.join(kinds)} layers (window {layout.window}); source: {layout.source}")
    return out
