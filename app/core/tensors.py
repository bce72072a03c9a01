"""The tensors a plan keeps per GPU: base weights, adapters, gradients and optimizer states, with byte counts."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from app.core.adapters import Adapted
from app.core.plan import TrainingPlan
from app.core.quant import DTYPE_BYTES, quantized_weight_allocated, quantized_weight_bytes, rounded
from app.core.spec import ModelSpec

# bitsandbytes 8-bit optimizers keep tensors under 4096 elements in 32-bit (min_8bit_size)
BNB_MIN_8BIT = 4096
# bitsandbytes paged optimizers page only tensors of at least 1e5 elements; smaller ones stay in device memory
BNB_MIN_PAGED = 100_000
# bitsandbytes block-wise 8-bit states: one fp32 absmax per 256 values
BNB_STATE_BLOCK = 256


@dataclass
class Split:
    """Bytes split into the decoder layers' share and the rest (embeddings, lm_head, final norm)."""

    layers: int = 0
    other: int = 0

    def add(self, nbytes: int, in_layers: bool) -> None:
        if in_layers:
            self.layers += nbytes
        else:
            self.other += nbytes

    @property
    def total(self) -> int:
        return self.layers + self.other


@dataclass
class Inventory:
    """Everything resident per GPU before sharding, by kind."""

    base: Split = field(default_factory=Split)
    base_quantized: int = 0  # part of base held as 4/8-bit weights
    adapters: Split = field(default_factory=Split)
    grads: Split = field(default_factory=Split)
    states: Split = field(default_factory=Split)
    paged_states: int = 0  # evictable unified memory, outside the caching allocator
    foreach_temp: int = 0  # torch foreach AdamW: sqrt(exp_avg_sq) copies of every state at once
    step_temp: int = 0  # other optimizer-step temporaries (Adafactor fp32 copies)
    largest_dequant: int = 0  # the widest quantized weight dequantized to compute dtype
    largest_layer_weights: int = 0  # one decoder layer's unsharded weights (ZeRO-3/FSDP all-gather)
    double_quant_saving: int = 0
    quantized: frozenset[str] = frozenset()
    trainable_params: int = 0
    trainable_dtype: int = 4


def _param_dtype_bytes(plan: TrainingPlan) -> int:
    if plan.method == "qlora":
        return 4  # prepare_model_for_kbit_training upcasts every non-quantized parameter to fp32
    if plan.method == "full" and plan.dtype == "fp16":
        return 4  # fp16 training keeps fp32 master weights (GradScaler cannot unscale fp16 grads)
    return DTYPE_BYTES[plan.dtype]


def _states(plan: TrainingPlan, shape: tuple[int, ...], dtype: int) -> tuple[int, int, int]:
    """(allocated state bytes, paged state bytes, step temporary) for one trainable tensor."""
    n = 1
    for d in shape:
        n *= d
    opt = plan.optimizer
    if opt == "sgd":
        return 0, 0, 0  # torch SGD without momentum (HF Trainer default) keeps no state
    if opt == "adamw":
        # exp_avg and exp_avg_sq in the parameter dtype; the step scalar lives on the CPU, so the CPU
        # reference counts it as device memory (one 512-byte block) and CUDA does not
        return 2 * rounded(n * dtype) + (rounded(4) if plan.device == "cpu" else 0), 0, 0
    if opt == "adafactor":
        # transformers Adafactor, beta1=None: factored second moment (row + column) for matrices, full for vectors
        state = rounded(shape[0] * 4) + rounded(shape[1] * 4) if len(shape) == 2 else rounded(n * 4)
        return state, 0, 3 * rounded(n * 4)  # fp32 copies of the param, the squared grad and the update
    eight_bit = opt in ("adamw_8bit", "paged_adamw_8bit")
    if eight_bit and n >= BNB_MIN_8BIT:
        state = 2 * (rounded(n) + rounded(-(-n // BNB_STATE_BLOCK) * 4))
    else:
        state = 2 * rounded(n * 4)  # bitsandbytes 32-bit states are fp32 whatever the parameter dtype
    if opt.startswith("paged") and n >= BNB_MIN_PAGED:
        return 0, state, 0
    return state, 0, 0


# Base-weight inventories depend only on the model and a few plan fields: cache them (bounded).
_BASE_CACHE: dict[tuple[str, str, str, str | None, bool, str, str, str], Inventory] = {}
_BASE_CACHE_SIZE = 256


def base_key(model: ModelSpec, plan: TrainingPlan) -> tuple[str, str, str, str | None, bool, str, str, str]:
    """What the base inventory depends on: the model and the plan's precision, optimizer and device."""
    return (
        model.config_hash,
        model.id,
        plan.method,
        plan.quant,
        plan.double_quant,
        plan.dtype,
        plan.optimizer,
        plan.device,
    )


def inventory(model: ModelSpec, plan: TrainingPlan, adapted: list[Adapted]) -> Inventory:
    """The base inventory (cached per model and precision) plus this plan's adapters, grads and states."""
    key = base_key(model, plan)
    base = _BASE_CACHE.get(key)
    if base is None:
        if len(_BASE_CACHE) >= _BASE_CACHE_SIZE:
            _BASE_CACHE.clear()
        base = _BASE_CACHE[key] = _base_inventory(model, plan)
    inv = replace(base, adapters=Split(), grads=replace(base.grads), states=replace(base.states))
    _add_adapters(inv, plan, adapted)
    return inv


def _base_inventory(model: ModelSpec, plan: TrainingPlan) -> Inventory:
    inv = Inventory()
    pdt = _param_dtype_bytes(plan)
    c = DTYPE_BYTES[plan.dtype]
    full = plan.method == "full"
    quant = plan.quant if plan.quant in ("nf4", "fp4", "int8") else None
    per_layer_weights: dict[str, int] = {}
    for g in model.groups:
        is_q = quant is not None and g.quantizable
        if is_q:
            inv.quantized |= {g.name}
        for p in g.params:
            if is_q and p.name == "weight":
                one = quantized_weight_allocated(p.numel, g.out_features, quant, plan.double_quant)  # type: ignore[arg-type]
                inv.base_quantized += one * g.count
                inv.largest_dequant = max(inv.largest_dequant, p.numel * c)
                if quant in ("nf4", "fp4") and plan.double_quant:
                    inv.double_quant_saving += g.count * (
                        quantized_weight_bytes(p.numel, g.out_features, quant, False)
                        - quantized_weight_bytes(p.numel, g.out_features, quant, True)
                    )
            else:
                one = rounded(p.numel * pdt)
            inv.base.add(one * g.count, g.in_layers)
            if g.in_layers:
                per_layer_weights[g.name] = per_layer_weights.get(g.name, 0) + one
            if full:
                inv.grads.add(rounded(p.numel * pdt) * g.count, g.in_layers)
                state, paged, temp = _states(plan, p.shape, pdt)
                inv.states.add(state * g.count, g.in_layers)
                inv.paged_states += paged * g.count
                inv.step_temp = max(inv.step_temp, temp)
                inv.foreach_temp += rounded(p.numel * pdt) * g.count if plan.optimizer == "adamw" else 0
                inv.trainable_params += p.numel * g.count
    inv.largest_layer_weights = sum(per_layer_weights.values())
    inv.trainable_dtype = pdt if full else 4
    return inv


def _add_adapters(inv: Inventory, plan: TrainingPlan, adapted: list[Adapted]) -> None:
    for ad in adapted:
        g = ad.group
        for shape in ad.shapes:
            n = shape[0] * (shape[1] if len(shape) == 2 else 1)
            one = rounded(n * 4)  # PEFT keeps adapter weights in fp32 (autocast_adapter_dtype)
            inv.adapters.add(one * g.count, g.in_layers)
            inv.grads.add(one * g.count, g.in_layers)
            state, paged, temp = _states(plan, shape, 4)
            inv.states.add(state * g.count, g.in_layers)
            inv.paged_states += paged * g.count
            inv.step_temp = max(inv.step_temp, temp)
            inv.foreach_temp += one * g.count if plan.optimizer == "adamw" else 0
            inv.trainable_params += n * g.count
