"""DeepSpeed ZeRO-3 with ZeRO-Offload: `offload_param` and `offload_optimizer` on the CPU (the plan's `offload`
under zero3), on one GPU of several.

Every parameter partition but the persistent frozen ones, the gradient partitions, the fp32 partition and its
gradient, the optimizer's states and its step live in host RAM; the device keeps what ZeRO-3 gathers and reduces
(the gathered parameters, the persistent ones, the reduce bucket, the reduction) and the step's activations, plus
the copies a host partition needs to reach the device. Measured on torch.distributed CPU ranks over gloo, counted by
placement (app/calibration/zero3_offload.py, calibration/cpu-matrix-zero3-offload.toml). Notation as app/core/zero.py:
`d` the model dtype's bytes, `n` GPUs, `Pn` one GPU's trainable partition (`Σ ⌈x/n⌉` over the trainable
parameters `x`, in elements), `L` the largest trainable parameter. Sources: deepspeed 0.19.8 runtime/zero/stage3.py,
partition_parameters.py, partitioned_param_coordinator.py, runtime/engine.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.core.plan import TrainingPlan
from app.core.quant import ceil_div, rounded
from app.core.units import DTYPE_BYTES, FP32

if TYPE_CHECKING:
    from app.core.spec import ModelSpec
    from app.core.zero import Buckets, ZeroTerms

FP64 = 8  # deepspeed runtime/zero/utils.py `get_norm_dtype`: gradient norms in torch.double where supported


def zero3_offload(plan: TrainingPlan) -> bool:
    """ZeRO-3's offload as these terms model it: offload_param and offload_optimizer on the CPU, full fine-tuning or
    LoRA, on several GPUs (QLoRA with offload is not run)."""
    return plan.offload and plan.sharding == "zero3" and plan.gpus > 1 and plan.method in ("full", "lora")


def persistent_frozen_bytes(plan: TrainingPlan, frozen: list[int], buckets: Buckets) -> int:
    """The frozen partitions that stay on the device: `_partition_param` makes a persistent parameter's partition
    (`ds_persist`: under stage3_param_persistence_threshold) on the device (`self.local_device`), every other one
    on the offload device (`self.remote_device`); the trainable ones all move to the host flat buffer. Source:
    partition_parameters.py (`_partition_param`), stage3.py (`_create_fp16_partitions_with_defragmentation`)."""
    d = DTYPE_BYTES[plan.dtype]
    return sum(rounded(d * ceil_div(x, plan.gpus)) for x in frozen if x < buckets.persistence)


def offload_flush_bytes(plan: TrainingPlan, trainable: list[int]) -> int:
    """Each reduced gradient's partition, after its copy into the host gradient buffer, is copied back to the device
    (`grad_buffer.to(grad_partition.device)`) for its norm, taken from an fp64 copy (`_constant_buffered_norm2`), and
    its fp32 cast before the copy into the host fp32 gradient: at most the largest parameter's partition `d·⌈L/n⌉`
    and its fp64 copy `8·⌈L/n⌉` at once (one parameter at a time). Source: stage3.py (`partition_grads`,
    `_offload_grad_partition_at_boundary`, `_constant_buffered_norm2`)."""
    part = ceil_div(max(trainable, default=0), plan.gpus)
    return rounded(DTYPE_BYTES[plan.dtype] * part) + rounded(FP64 * part)


def head_flush_bytes(model: ModelSpec, plan: TrainingPlan, buckets: Buckets) -> int:
    """Full fine-tuning: lm_head's gradient (`V·h` elements) outgrows a reduce bucket smaller than it (the configs'
    auto `h·h`), so it is reduced on its own at the next gradient hook, beside every activation, its partition
    flushed there (`offload_flush_bytes` of lm_head). Measured on CPU ranks (llama, full, auto buckets, 2 ranks: the
    backward's peak). Source: stage3.py (`reduce_independent_p_g_buckets_and_remove_grads`, `partition_grads`)."""
    head = model.arch.vocab_size * model.arch.hidden_size
    if plan.method != "full" or buckets.reduce >= head:
        return 0
    return offload_flush_bytes(plan, [head])


# the projections that read a decoder layer's normed input (the attention's query, key and value)
ATTENTION_INPUTS = frozenset({"q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn", "Wqkv"})


def first_layer_unused_bytes(model: ModelSpec, plan: TrainingPlan, buckets: Buckets) -> int:
    """LoRA without checkpointing: the first layer's query, key and value projections read the input embedding's
    output, which needs no gradient (nothing makes it: `enable_input_require_grads` comes with checkpointing), and
    their weights are frozen, so autograd records no backward for their base layers, DeepSpeed's backward hooks
    never fetch them and the trace releases them after their forward: none of them is among the gathered
    parameters at the forward's end (`zero3_terms` counts every parameter a backward could run through). Measured
    on CPU ranks (llama, LoRA on q_proj and v_proj, auto buckets, no checkpointing: 13 of the 16 attention weights
    gathered at the forward's peak). Source: partitioned_param_coordinator.py (`__params_to_release`: the trace's
    next use), parameter_offload.py (`_pre_backward_module_hook`)."""
    if plan.method == "full" or plan.gradient_checkpointing:
        return 0
    d = DTYPE_BYTES[plan.dtype]
    leaves = [g for g in model.groups if g.in_layers and g.leaf in ATTENTION_INPUTS]
    return sum(rounded(d * p.numel) for g in leaves for p in g.params if p.numel >= buckets.persistence)


def zero3_offload_terms(
    model: ModelSpec, plan: TrainingPlan, numels: tuple[list[int], list[int]], terms: ZeroTerms, buckets: Buckets
) -> ZeroTerms:
    """ZeRO-3 with offload_param and offload_optimizer (`zero3_terms` for what it gathers and reduces): no weight,
    adapter, gradient or fp32 partition, state or step temporary on the device but the persistent frozen partitions
    (`persistent_frozen_bytes`); the bucket, the reduction, the persistent and the gathered parameters and the
    prefetch as without offload (less the first layer's unused projections: `first_layer_unused_bytes`), the
    backward's moments still holding every gathered parameter but lm_head (released after its backward); a
    partition's device copy, the gather's input, is freed once the gather is done. The load's moment is the start-up
    gather of the largest trainable parameter beside its partition's device copy (the reduction hooks' setup gathers
    each once), as without offload. The model as the harness builds it sits whole on the device before the engine
    partitions it (the engine moves a model not built under `zero.Init` to the device, `_configure_distributed_model`);
    transformers builds a ZeRO-3 model under `zero.Init` (modeling_utils, `is_deepspeed_zero3_enabled`), so that
    moment is not counted (never the measured peak: at most 86 % of it at auto buckets on cpu-matrix-zero3-offload).
    Each reduction flushes one gradient partition at a time (`offload_flush_bytes`). Measured on CPU ranks by
    placement (calibration/cpu-matrix-zero3-offload.toml: 8 points within 3.03 %; llama, full, 2 ranks, the generic
    offload terms before these: -33.6 % at auto buckets, -99.2 % at DeepSpeed's). Source: stage3.py
    (`_create_fp16_partitions_with_defragmentation`, `_create_fp32_partitions`, `initialize_optimizer_states`,
    `_setup_for_real_optimizer`, `create_reduce_and_remove_grad_hooks`), runtime/engine.py
    (`_configure_distributed_model`)."""
    trainable, frozen = numels
    d = DTYPE_BYTES[plan.dtype]
    weights = persistent_frozen_bytes(plan, frozen, buckets)
    largest = max(trainable, default=0)
    start_gather = rounded(d * largest) + rounded(d * ceil_div(largest, plan.gpus))
    head = [rounded(d * p.numel) for g in model.groups if g.name.endswith("lm_head") for p in g.params]
    gathered = max(0, terms.gathered - first_layer_unused_bytes(model, plan, buckets))
    return terms._replace(
        weights=weights,
        adapters=0,
        master=0,
        states=0,
        grad_partition=0,
        init=start_gather,
        fp32_grad=0,
        step_temp=0,
        cast=0,
        gathered=gathered,
        backward_gathered=max(0, gathered - sum(head)),
        offload_flush=offload_flush_bytes(plan, trainable),
    )


def zero3_offload_host_bytes(plan: TrainingPlan, trainable: int, frozen: int) -> int:
    """ZeRO-3 offload's host RAM between steps, for `trainable` parameters and `frozen` bytes of host frozen
    partitions: the trainable partitions' flat buffer `d·Pn` (`param_groups_fp16_flat_cpu_memory`), the gradient
    partitions' `d·Pn` (`grad_partitions_flat_buffer`), the fp32 partition `4·Pn` and its gradient `4·Pn`, and the
    optimizer's states over it; the step's temporaries come on top. Measured on CPU ranks by placement (the host
    peaks of cpu-matrix-zero3-offload are this plus the step's temporaries). Source: stage3.py
    (`_create_param_groups_fp16_flat_cpu_memory`, `_setup_for_real_optimizer`, `_create_fp32_partitions`,
    `initialize_optimizer_states`)."""
    from app.core.zero import optimizer_partition_bytes

    partition = ceil_div(trainable, plan.gpus)
    states, _ = optimizer_partition_bytes(plan, partition)
    return frozen + 2 * rounded(DTYPE_BYTES[plan.dtype] * partition) + 2 * rounded(FP32 * partition) + states
