"""estimate(model, plan) -> Estimate: the one entry point for the memory number."""

from __future__ import annotations

import math

from app.core.activations import kept_layers, layer_activations, logits_bytes
from app.core.adapters import Adapted, adapted_groups
from app.core.plan import TrainingPlan
from app.core.quant import ceil_div
from app.core.result import Category, Estimate, Params, Phase, Term
from app.core.spec import ModelSpec
from app.core.tensors import Inventory, Split, base_key, inventory
from app.errors import PlanError

MIB = 1024 * 1024
# cuBLAS workspace torch allocates through the caching allocator on Hopper (CUBLAS_WORKSPACE_CONFIG :4096:8)
CUBLAS_WORKSPACE_BYTES = 32 * MIB
# CUDA context, kernel images and library handles: outside the allocator, seen by nvidia-smi
CUDA_CONTEXT_BYTES = 512 * MIB
# Caching-allocator blocks kept reserved beyond the live peak (fragmentation); first-principles share
ALLOCATOR_FRAGMENTATION = 0.05
SEGMENT = 2 * MIB


_term = Term
_phase = Phase


def _check(plan: TrainingPlan) -> None:
    if plan.device == "cpu":
        if plan.optimizer not in ("adamw", "sgd", "adafactor"):
            raise PlanError(
                f"the CPU reference cannot run {plan.optimizer} (bitsandbytes paged/8-bit optimizers need CUDA); use adamw, sgd or adafactor"
            )
        if plan.attn == "flash_attention_2":
            raise PlanError("flash_attention_2 needs CUDA: use sdpa or eager with device cpu")
        if plan.gpus != 1:
            raise PlanError("the CPU reference models one device: set gpus to 1")


# (adapted groups, notes, inventory) depend on the model and the plan's precision/adapter fields only
_TENSOR_CACHE: dict[tuple[object, ...], tuple[list[Adapted], list[str], Inventory]] = {}


def _tensors(model: ModelSpec, plan: TrainingPlan) -> tuple[list[Adapted], list[str], Inventory]:
    key = (*base_key(model, plan), plan.targets, plan.rank, plan.dora, plan.dropout > 0)
    hit = _TENSOR_CACHE.get(key)
    if hit is None:
        if len(_TENSOR_CACHE) >= 1024:
            _TENSOR_CACHE.clear()
        adapted, notes = adapted_groups(model, plan)
        hit = _TENSOR_CACHE[key] = (adapted, notes, inventory(model, plan, adapted))
    return hit


def _share(split: Split, frac: float, div: int = 1) -> int:
    """Bytes of a split on the worst GPU: a fraction of the layers plus all the rest, over `div` shards."""
    return math.ceil((split.layers * frac + split.other) / div)


# One line per memory term: (category, note); a term's unit is always bytes.
NOTES: dict[str, tuple[Category, str]] = {
    "base_weight_bytes": ("weights", "base model weights"),
    "lora_adapter_bytes": ("adapters", "LoRA A/B (and DoRA magnitudes) in fp32"),
    "optimizer_state_bytes": ("optimizer", "optimizer states kept in device memory"),
    "master_weight_bytes": ("optimizer", "fp32 master copy of trainable weights (DeepSpeed)"),
    "allgather_buffer_bytes": ("transient", "two decoder layers gathered unsharded (current + prefetch)"),
    "activation_bytes": ("activations", "tensors autograd keeps across layers"),
    "logits_peak_bytes": ("activations", "logits, fp32 upcast and cross-entropy (log_softmax and its gradient)"),
    "layer_transient_bytes": (
        "transient",
        "the running layer: intermediates (forward) or recomputed activations and gradient buffers (backward)",
    ),
    "dequant_transient_bytes": (
        "transient",
        "bitsandbytes dequantizes the widest weight to the compute dtype for its matmul",
    ),
    "gradient_bytes": ("gradients", "gradients of trainable parameters"),
    "ddp_bucket_bytes": ("gradients", "DDP gradient buckets (a flat copy of the gradients)"),
    "optimizer_temp_bytes": (
        "transient",
        "optimizer-step temporaries (foreach AdamW: sqrt(exp_avg_sq) of every state at once)",
    ),
}


def estimate(model: ModelSpec, plan: TrainingPlan) -> Estimate:
    """Peak memory of one fine-tuning step of `plan` on `model`, per GPU, with its breakdown."""
    _check(plan)
    adapted, adapter_notes, inv = _tensors(model, plan)
    notes = [*model.notes, *adapter_notes, *_stack_notes(model, plan)]
    layer = layer_activations(model, plan, {a.group.name: a for a in adapted}, inv.quantized)
    n_layers = model.arch.num_layers
    n, sharding = plan.gpus, plan.sharding

    # worst GPU's share of decoder layers: split by layers (naive model parallel), else all layers
    split_layers = sharding == "none" and n > 1
    frac = ceil_div(n_layers, n) / n_layers if split_layers else 1.0
    gpu_layers = ceil_div(n_layers, n) if split_layers else n_layers
    shard_params = n if sharding in ("fsdp", "zero3") else 1
    shard_states = n if sharding in ("fsdp", "zero2", "zero3") else 1

    weights = _share(inv.base, frac, shard_params)
    adapters = _share(inv.adapters, frac, shard_params)
    grads = _share(inv.grads, frac, shard_states)
    states = _share(inv.states, frac, shard_states)
    paged = math.ceil(inv.paged_states * frac / shard_states)
    master = 0
    if sharding in ("zero2", "zero3") and inv.trainable_dtype == 2:
        master = math.ceil(inv.trainable_params * 4 * frac / shard_states)  # DeepSpeed keeps fp32 master weights
    offloaded = 0
    if plan.offload:
        offloaded = states + master + paged
        states = master = paged = 0
        if sharding in ("fsdp", "zero3"):
            offloaded += weights
            weights = 0
    gather = 2 * inv.largest_layer_weights if sharding in ("fsdp", "zero3") else 0
    ddp_buckets = grads if sharding == "ddp" and n > 1 else 0
    foreach = math.ceil(inv.foreach_temp * frac / shard_states) if not plan.offload else 0
    # gradients of every layer but the one being backpropagated (the end of backward)
    late_grads = grads - math.ceil(inv.grads.layers * frac / shard_states / max(1, gpu_layers))
    head_grads = math.ceil(inv.grads.other / shard_states)  # lm_head's gradient exists from the start of backward

    if plan.gradient_checkpointing:
        kept, recomputed = kept_layers(plan, gpu_layers)
        acts = kept * layer.layer_input + layer.head_saved
        acts_at_end = layer.layer_input  # only layer 0's input is still kept
        # the recomputed layers' inputs are the checkpointed ones, already in acts
        recomputed_saved = recomputed * (layer.saved - layer.input_in_saved)
        layer_peak = recomputed_saved + max(layer.backward_transient, layer.recompute_transient)
    else:
        acts = gpu_layers * layer.saved + layer.head_saved - layer.first_layer_discount
        acts_at_end = layer.saved - layer.first_layer_discount
        layer_peak = layer.backward_transient
    logits_fwd, logits_bwd = logits_bytes(model, plan)
    dequant = inv.largest_dequant + (inv.largest_dequant // 2 if plan.method == "qlora" and plan.quant == "int8" else 0)

    base = {"base_weight_bytes": weights, "lora_adapter_bytes": adapters}
    persistent = {
        **base,
        "optimizer_state_bytes": states,
        "master_weight_bytes": master,
        "allgather_buffer_bytes": gather,
    }
    layer_fwd = {"layer_transient_bytes": layer.forward_transient, "dequant_transient_bytes": dequant}
    layer_bwd = {"layer_transient_bytes": layer_peak, "dequant_transient_bytes": dequant}
    candidates: dict[str, list[dict[str, int]]] = {
        "load": [base],
        "forward": [
            {**persistent, "activation_bytes": acts, "logits_peak_bytes": logits_fwd},
            {**persistent, "activation_bytes": acts, **layer_fwd},
        ],
        "backward": [
            {
                **persistent,
                "activation_bytes": acts,
                "logits_peak_bytes": logits_bwd,
                "ddp_bucket_bytes": ddp_buckets,
            },
            {
                **persistent,
                "activation_bytes": acts - layer.head_saved,  # the final norm's backward has run and freed it
                "gradient_bytes": head_grads,
                **layer_bwd,
                "ddp_bucket_bytes": ddp_buckets,
            },
            {
                **persistent,
                "activation_bytes": acts_at_end,
                "gradient_bytes": late_grads,
                **layer_bwd,
                "ddp_bucket_bytes": ddp_buckets,
            },
        ],
        "optimizer": [
            {
                **persistent,
                "gradient_bytes": grads,
                "ddp_bucket_bytes": ddp_buckets,
                "optimizer_temp_bytes": max(foreach, inv.step_temp),
            },
        ],
    }
    chosen = {name: max(options, key=lambda c: sum(c.values())) for name, options in candidates.items()}
    phases = tuple(_phase(name=name, bytes=sum(c.values())) for name, c in chosen.items())
    peak = max(phases, key=lambda ph: ph.bytes)
    terms = [
        _term(term=k, bytes=v, category=NOTES[k][0], note=_note(k, plan)) for k, v in chosen[peak.name].items() if v
    ]
    terms += _overheads(plan, sum(t.bytes for t in terms), paged, offloaded)
    if model.published_params is not None and model.published_params != model.num_params:
        notes.append(
            f"the Hub reports {model.published_params:,} parameters; the inventory counts {model.num_params:,}"
        )
    return Estimate(
        model=model.id,
        revision=model.revision,
        plan=plan,
        params=Params(base=model.num_params, trainable=inv.trainable_params),
        breakdown=tuple(terms),
        phases=phases,
        peak_phase=peak.name,
        double_quant_saving_bytes=inv.double_quant_saving
        if plan.quant in ("nf4", "fp4") and plan.double_quant
        else None,
        notes=tuple(notes),
    )


def _note(term: str, plan: TrainingPlan) -> str:
    note = NOTES[term][1]
    if term == "base_weight_bytes":
        q = plan.quant if plan.method == "qlora" else plan.dtype
        rest = "fp32 after prepare_model_for_kbit_training" if plan.method == "qlora" else plan.dtype
        return f"{note} ({q}; unquantized modules in {rest})"
    if term == "lora_adapter_bytes":
        return f"{note}, r={plan.rank}"
    if term == "optimizer_state_bytes":
        return f"{plan.optimizer} states kept in device memory"
    if term == "activation_bytes" and plan.gradient_checkpointing:
        return f"{note} (checkpointed layer inputs)"
    return note


def _stack_notes(model: ModelSpec, plan: TrainingPlan) -> list[str]:
    """Facts of the real stack a user should know about this plan."""
    notes = []
    fused = sum(g.count * g.numel for g in model.groups if g.in_layers and any(len(p.shape) == 3 for p in g.params))
    if plan.method == "qlora" and fused:
        notes.append(
            f"{fused:,} parameters live in fused 3-D expert tensors that bitsandbytes does not quantize "
            "(transformers 5 MoE layout, bitsandbytes#1849); prepare_model_for_kbit_training upcasts them to fp32"
        )
    skipped = sorted({g.cls for g in model.groups if g.in_layers and g.kind == "linear" and not g.quantizable})
    if plan.method == "qlora" and skipped:
        notes.append(
            f"bitsandbytes leaves {', '.join(skipped)} layers unquantized: transformers replaces only modules whose "
            "type is exactly nn.Linear, so these stay in fp32 after prepare_model_for_kbit_training"
        )
    return notes


def _overheads(plan: TrainingPlan, allocated: int, paged: int, offloaded: int) -> list[Term]:
    """Terms outside the live tensors: CUDA workspace, allocator cache, context, paged and offloaded states."""
    t: list[Term] = []
    if plan.device == "cuda":
        t.append(
            _term(
                term="cublas_workspace_bytes",
                bytes=CUBLAS_WORKSPACE_BYTES,
                category="overhead",
                note="cuBLAS workspace, allocated through the caching allocator",
            )
        )
        frag = math.ceil((allocated + CUBLAS_WORKSPACE_BYTES) * ALLOCATOR_FRAGMENTATION / SEGMENT) * SEGMENT
        t.append(
            _term(
                term="allocator_cache_bytes",
                bytes=frag,
                category="overhead",
                counted="reserved",
                note=f"caching-allocator fragmentation ({ALLOCATOR_FRAGMENTATION:.0%} of allocated, 2 MiB segments)",
            )
        )
        t.append(
            _term(
                term="cuda_context_bytes",
                bytes=CUDA_CONTEXT_BYTES,
                category="overhead",
                counted="device",
                note="CUDA context, kernels and library handles (outside the allocator)",
            )
        )
        if paged:
            t.append(
                _term(
                    term="paged_optimizer_state_bytes",
                    bytes=paged,
                    category="optimizer",
                    counted="device",
                    evictable=True,
                    note="paged optimizer states in unified memory; evicted to host RAM under pressure",
                )
            )
    if offloaded:
        t.append(
            _term(
                term="offloaded_bytes",
                bytes=0,
                category="optimizer",
                note=f"{offloaded:,} bytes of states/weights live in host RAM (offload); not on the GPU",
            )
        )
    return t
