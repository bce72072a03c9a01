"""The tensors a plan keeps per GPU: base weights, adapters, gradients and optimizer states, with byte counts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import NamedTuple

from app.core.adapters import Adapted, LoraKey, adapted_modules
from app.core.plan import Device, DType, Method, Optimizer, Quant, TrainingPlan
from app.core.quant import quantized_weight_allocated, quantized_weight_bytes, quantized_weight_tensors, rounded
from app.core.spec import ModelSpec
from app.core.step import adapted_by_leaf, adapter_dtype_bytes, kbit_upcast
from app.core.units import DTYPE_BYTES, FP32, UINT8

# bitsandbytes 8-bit optimizers keep tensors under 4096 elements in 32-bit (min_8bit_size)
BNB_MIN_8BIT = 4096
# bitsandbytes paged optimizers page only tensors of at least 1e5 elements; smaller ones stay in device memory
BNB_MIN_PAGED = 100_000
# bitsandbytes block-wise 8-bit states: one fp32 absmax per 256 values
BNB_STATE_BLOCK = 256


@dataclass(frozen=True)
class LayerSplit:
    """Bytes split into the decoder layers' share and the rest (embeddings, lm_head, final norm)."""

    layers: int = 0
    other: int = 0

    def plus(self, nbytes: int, in_layers: bool) -> LayerSplit:
        if in_layers:
            return LayerSplit(self.layers + nbytes, self.other)
        return LayerSplit(self.layers, self.other + nbytes)

    def __add__(self, other: LayerSplit) -> LayerSplit:
        return LayerSplit(self.layers + other.layers, self.other + other.other)

    @property
    def total(self) -> int:
        return self.layers + self.other


@dataclass(frozen=True)
class Inventory:
    """Everything resident per GPU before sharding, by kind."""

    base: LayerSplit = LayerSplit()
    base_quantized: int = 0  # part of base held as 4/8-bit weights
    adapters: LayerSplit = LayerSplit()
    grads: LayerSplit = LayerSplit()
    states: LayerSplit = LayerSplit()
    paged_states: int = 0  # evictable unified memory, outside the caching allocator
    foreach_temp: int = 0  # torch foreach AdamW: sqrt(exp_avg_sq) copies of every state at once
    step_temp: int = 0  # other optimizer-step temporaries (Adafactor fp32 copies)
    largest_dequant: int = 0  # the widest quantized weight dequantized to compute dtype
    largest_layer_weights: int = 0  # one decoder layer's unsharded weights (ZeRO-3/FSDP all-gather)
    double_quant_saving: int = 0
    quant_states: int = 0  # part of base_quantized that is not the packed data: absmax, nested states, code maps
    layer_quant_states: int = 0  # the part of largest_layer_weights that is quant states (no parameters)
    quantized: frozenset[str] = frozenset()
    trainable_params: int = 0
    trainable_dtype: int = FP32


class BaseKey(NamedTuple):
    """The plan fields the base inventory depends on (precision, optimizer, device); hashable, so a cache key."""

    method: Method
    quant: Quant | None
    double_quant: bool
    dtype: DType
    optimizer: Optimizer
    device: Device
    adapter_bytes: int = FP32  # bytes per LoRA A/B element (`adapter_dtype_bytes`)
    kbit_upcast: bool = True  # QLoRA's non-quantized parameters upcast to fp32 (`step.kbit_upcast`)


def base_key(plan: TrainingPlan) -> BaseKey:
    return BaseKey(
        plan.method,
        plan.quant,
        plan.double_quant,
        plan.weight_dtype,
        plan.optimizer,
        plan.device,
        adapter_dtype_bytes(plan),
        kbit_upcast(plan) or plan.method != "qlora",
    )


class PlanTensors(NamedTuple):
    """What estimate() needs of a plan's tensors: the adapted groups, their notes and the inventory."""

    adapted: tuple[Adapted, ...]
    by_leaf: Mapping[str, Adapted]  # the adapted groups in the decoder layers, by leaf name (read-only)
    notes: tuple[str, ...]
    inventory: Inventory


@lru_cache(maxsize=1024)
def plan_tensors(model: ModelSpec, base: BaseKey, lora: LoraKey) -> PlanTensors:
    """The adapters PEFT adds and the inventory they make with the base (cached: estimate() is called in loops)."""
    adapted, notes = adapted_modules(model, lora)
    inv = inventory(model, base, adapted)
    return PlanTensors(adapted=adapted, by_leaf=adapted_by_leaf(adapted), notes=notes, inventory=inv)


def _param_dtype_bytes(key: BaseKey) -> int:
    if key.method == "qlora" and key.kbit_upcast:
        return FP32  # prepare_model_for_kbit_training upcasts every non-quantized parameter to fp32
    if key.method == "full" and key.dtype == "fp16":
        return FP32  # fp16 training keeps fp32 master weights (GradScaler cannot unscale fp16 grads)
    return DTYPE_BYTES[key.dtype]


class StateBytes(NamedTuple):
    """What the optimizer keeps for one trainable tensor."""

    allocated: int  # states in device memory
    paged: int  # states in unified memory (bitsandbytes paged optimizers)
    step_temp: int  # a temporary of the step (Adafactor)


def optimizer_state_bytes(key: BaseKey, shape: tuple[int, ...], dtype: int) -> StateBytes:
    """AdamW: 2 × param dtype; bnb 8-bit: 2 × (n uint8 + fp32 per 256) for tensors ≥ 4096 elements; bnb 32-bit and
    paged: 2 × fp32, paged for tensors ≥ 1e5 elements; SGD: 0; Adafactor: row + column fp32 for matrices.
    """
    n = 1
    for d in shape:
        n *= d
    opt = key.optimizer
    if opt == "sgd":
        return StateBytes(0, 0, 0)  # torch SGD without momentum (HF Trainer default) keeps no state
    if opt == "adamw":
        # exp_avg and exp_avg_sq in the parameter dtype; the step scalar lives on the CPU, so the CPU
        # reference counts it as device memory (one 512-byte block) and CUDA does not
        return StateBytes(2 * rounded(n * dtype) + (rounded(FP32) if key.device == "cpu" else 0), 0, 0)
    if opt == "adafactor":
        # transformers Adafactor, beta1=None: factored second moment (row + column) for matrices, full for vectors
        state = rounded(shape[0] * FP32) + rounded(shape[1] * FP32) if len(shape) == 2 else rounded(n * FP32)
        return StateBytes(state, 0, 3 * rounded(n * FP32))  # fp32 copies of the param, the squared grad and the update
    eight_bit = opt in ("adamw_8bit", "paged_adamw_8bit")
    if eight_bit and n >= BNB_MIN_8BIT:
        state = 2 * (rounded(n * UINT8) + rounded(-(-n // BNB_STATE_BLOCK) * FP32))
    else:
        state = 2 * rounded(n * FP32)  # bitsandbytes 32-bit states are fp32 whatever the parameter dtype
    if opt.startswith("paged") and n >= BNB_MIN_PAGED:
        return StateBytes(0, state, 0)
    return StateBytes(state, 0, 0)


def inventory(model: ModelSpec, key: BaseKey, adapted: tuple[Adapted, ...]) -> Inventory:
    """The base inventory (cached per model and precision) plus this plan's adapters, grads and states."""
    return _with_adapters(base_inventory(model, key), key, adapted)


@lru_cache(maxsize=256)
def base_inventory(model: ModelSpec, key: BaseKey) -> Inventory:
    """base_weight_bytes: quantized linears as bitsandbytes stores them (`quantized_weight_allocated`), everything
    else at `numel × dtype` (QLoRA: fp32); full fine-tuning adds a gradient and the optimizer states per weight.
    """
    pdt = _param_dtype_bytes(key)
    full = key.method == "full"
    quant = key.quant if key.quant in ("nf4", "fp4", "int8") else None
    inv = Inventory()
    per_layer_weights: dict[str, int] = {}
    layer_states = 0  # one decoder layer's quant states
    fp32 = set(model.arch.fp32_params)  # transformers keeps these in fp32 whatever the dtype (DeepSeek's router)
    for g in model.groups:
        is_q = quant is not None and g.quantizable
        if is_q:
            inv = replace(inv, quantized=inv.quantized | {g.name})
        for p in g.params:
            dtype = FP32 if f"{g.name}.{p.name}" in fp32 else pdt
            if is_q and p.name == "weight":
                states = inv.quant_states
                inv, one = _quantized_weight(inv, key, g.out_features, p.numel, g.count)
                layer_states += (inv.quant_states - states) // g.count if g.in_layers else 0
            else:
                one = rounded(p.numel * dtype)
            inv = replace(inv, base=inv.base.plus(one * g.count, g.in_layers))
            if g.in_layers:
                per_layer_weights[g.name] = per_layer_weights.get(g.name, 0) + one
            if full:
                inv = _trainable(inv, key, p.shape, dtype, g.count, g.in_layers)
    layer = sum(per_layer_weights.values())
    return replace(
        inv, largest_layer_weights=layer, layer_quant_states=layer_states, trainable_dtype=pdt if full else FP32
    )


def _quantized_weight(inv: Inventory, key: BaseKey, rows: int, numel: int, count: int) -> tuple[Inventory, int]:
    """One quantized weight (x count) and the bytes of one as allocated; double_quant_saving_bytes: single-quant
    bytes − double-quant bytes; dequant_transient_bytes: bitsandbytes dequantizes it to the compute dtype.
    """
    quant = key.quant
    one = quantized_weight_allocated(numel, rows, quant, key.double_quant)  # type: ignore[arg-type]
    saving = 0
    if quant in ("nf4", "fp4") and key.double_quant:
        saving = count * (
            quantized_weight_bytes(numel, rows, quant, False) - quantized_weight_bytes(numel, rows, quant, True)
        )
    packed = rounded(quantized_weight_tensors(numel, rows, quant, key.double_quant)[0])  # type: ignore[arg-type]
    inv = replace(
        inv,
        base_quantized=inv.base_quantized + one * count,
        quant_states=inv.quant_states + (one - packed) * count,
        largest_dequant=max(inv.largest_dequant, numel * DTYPE_BYTES[key.dtype]),
        double_quant_saving=inv.double_quant_saving + saving,
    )
    return inv, one


class Trained(NamedTuple):
    """One trainable tensor's bytes: its gradient, its optimizer state and its element count."""

    grad: int
    state: StateBytes
    numel: int


def trained_bytes(key: BaseKey, shape: tuple[int, ...], dtype: int) -> Trained:
    """gradient_bytes (one gradient in the tensor's dtype) and optimizer_state_bytes of one trainable tensor."""
    n = 1
    for d in shape:
        n *= d
    return Trained(rounded(n * dtype), optimizer_state_bytes(key, shape, dtype), n)


def _trainable(
    inv: Inventory, key: BaseKey, shape: tuple[int, ...], dtype: int, count: int, in_layers: bool
) -> Inventory:
    """One trainable tensor (x count): gradient_bytes in its dtype, optimizer_state_bytes, and the step temporaries."""
    t = trained_bytes(key, shape, dtype)
    return replace(
        inv,
        grads=inv.grads.plus(t.grad * count, in_layers),
        states=inv.states.plus(t.state.allocated * count, in_layers),
        paged_states=inv.paged_states + t.state.paged * count,
        step_temp=max(inv.step_temp, t.state.step_temp),
        foreach_temp=inv.foreach_temp + (t.grad * count if key.optimizer == "adamw" else 0),
        trainable_params=inv.trainable_params + t.numel * count,
    )


def _with_adapters(base: Inventory, key: BaseKey, adapted: tuple[Adapted, ...]) -> Inventory:
    """lora_adapter_bytes: PEFT keeps adapter weights in fp32 (autocast_adapter_dtype; `adapter_dtype_bytes`), each
    trained as above.

    Sums in plain ints and builds the Inventory once (a `replace` per tensor was most of a fresh estimate's time).
    """
    weights, grads, states = [0, 0], [0, 0], [0, 0]  # [decoder layers, other]
    paged = foreach = params = 0
    step_temp = base.step_temp
    for ad in adapted:
        g, side = ad.group, 0 if ad.group.in_layers else 1
        for shape in ad.shapes:
            n = shape[0] * (shape[1] if len(shape) == 2 else 1)
            dtype = key.adapter_bytes if len(shape) == 2 else FP32  # DoRA's magnitude vector stays fp32
            weights[side] += rounded(n * dtype) * g.count
            t = trained_bytes(key, shape, dtype)
            grads[side] += t.grad * g.count
            states[side] += t.state.allocated * g.count
            paged += t.state.paged * g.count
            step_temp = max(step_temp, t.state.step_temp)
            foreach += t.grad * g.count if key.optimizer == "adamw" else 0
            params += t.numel * g.count
    return replace(
        base,
        adapters=base.adapters + LayerSplit(*weights),
        grads=base.grads + LayerSplit(*grads),
        states=base.states + LayerSplit(*states),
        paged_states=base.paged_states + paged,
        step_temp=step_temp,
        foreach_temp=base.foreach_temp + foreach,
        trainable_params=base.trainable_params + params,
    )
