"""DeepSpeed ZeRO-2/3 on one GPU: flat partitions, fp32 masters, the gradient bucket, ZeRO-3's gathered parameters.

Measured on torch.distributed CPU ranks over gloo, each rank driving a DeepSpeed 0.19.8 engine under its own
live-tensor tracker (app/calibration/zero.py; calibration/cpu-matrix-zero.toml, docs/accuracy-multi.md), bf16,
torch AdamW (`zero_allow_untested_optimizer`), DeepSpeed's ZeRO defaults. Notation: `P` trainable parameters
(elements), `n` GPUs, `d` the model dtype's bytes (DeepSpeed casts every parameter to bf16/fp16 when that is
enabled, LoRA adapters too: deepspeed/runtime/engine.py `_cast_module_mixed_precision`), `Pn` one GPU's partition
of them, `B` reduce_bucket_size. Sources: deepspeed/runtime/zero/stage_1_and_2.py (ZeRO-2), stage3.py,
partition_parameters.py and partitioned_param_coordinator.py (ZeRO-3), config.py (the defaults), 0.19.8.

Known limitations: bitsandbytes' optimizers are not measured (they keep the first-principles terms of
app/core/estimate.py, or these formulas unmeasured); ZeRO-3's offload_param with offload_optimizer is, counted by
placement (app/core/zero3_offload.py, calibration/cpu-matrix-zero3-offload.toml), and ZeRO-2's offload_optimizer
(app/calibration/zero_offload.py: full and LoRA in bf16, fp16 and fp32, QLoRA in bf16, calibration/
cpu-matrix-zero-offload.toml and cpu-matrix-zero-offload2.toml); QLoRA under ZeRO-2 and ZeRO-3, bf16, fp16 and
fp32, torch AdamW and SGD and transformers' Adafactor, with and without accumulation, at DeepSpeed's bucket sizes
and the configs' `auto` are (calibration/cpu-matrix-zero*.toml); ZeRO-3's reuse window for models above `MAX_REUSE_DISTANCE / 2`
parameters is first-principles.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

from app.core.adapters import Adapted
from app.core.plan import TrainingPlan
from app.core.quant import ceil_div, quantized_weight_tensors, rounded
from app.core.spec import ModelSpec
from app.core.tensors import Inventory
from app.core.units import DTYPE_BYTES, FP32
from app.core.zero3_offload import head_flush_bytes, zero3_offload, zero3_offload_terms
from app.core.zero_layout import zero2_layout_bytes

ZERO = ("zero2", "zero3")
# DeepSpeedZeroConfig defaults (deepspeed/runtime/zero/config.py, 0.19.8), all in elements
REDUCE_BUCKET_ELEMENTS = 500_000_000  # reduce_bucket_size
PREFETCH_BUCKET_ELEMENTS = 50_000_000  # stage3_prefetch_bucket_size
PERSISTENCE_THRESHOLD = 100_000  # stage3_param_persistence_threshold: smaller parameters are never released
MAX_REUSE_DISTANCE = 1_000_000_000  # stage3_max_reuse_distance
FP64 = 8  # deepspeed runtime/zero/utils.py `get_norm_dtype`: gradient norms in torch.double where supported
# stage_1_and_2.py: `nccl_start_alignment_factor = 2`; the flat buffer is padded to a multiple of 2·n elements
ALIGNMENT = 2
# the MLP projections of the dense families (llama/mistral/qwen gated MLPs, GPT-style fc1/fc2)
MLP_LEAVES = frozenset({"gate_proj", "up_proj", "down_proj", "fc1", "fc2", "dense_h_to_4h", "dense_4h_to_h"})


class Buckets(NamedTuple):
    """DeepSpeed ZeRO's bucket settings, in elements."""

    reduce: int  # reduce_bucket_size
    prefetch: int  # stage3_prefetch_bucket_size
    persistence: int  # stage3_param_persistence_threshold


DEEPSPEED_BUCKETS = Buckets(REDUCE_BUCKET_ELEMENTS, PREFETCH_BUCKET_ELEMENTS, PERSISTENCE_THRESHOLD)


def bucket_sizes(model: ModelSpec, plan: TrainingPlan) -> Buckets:
    """The plan's ZeRO bucket sizes: DeepSpeed's defaults, or the DeepSpeed config's `"auto"` as transformers fills
    it from the hidden size `h`: reduce_bucket_size `h·h`, stage3_prefetch_bucket_size `int(0.9·h·h)`,
    stage3_param_persistence_threshold `10·h` (the last two under ZeRO-3 only; ZeRO-2 does not read them). Source:
    transformers 5.24.0 integrations/deepspeed.py `HfTrainerDeepSpeedConfig.trainer_config_finalize`, and the same
    formulas in accelerate's accelerator.py `_prepare_deepspeed`."""
    return DEEPSPEED_BUCKETS if plan.zero_buckets == "deepspeed" else auto_buckets(model.arch.hidden_size)


def auto_buckets(h: int) -> Buckets:
    """The DeepSpeed config's `"auto"` bucket sizes for hidden size `h` (`bucket_sizes`)."""
    return Buckets(reduce=h * h, prefetch=int(0.9 * h * h), persistence=10 * h)


class ZeroTerms(NamedTuple):
    """One GPU's ZeRO tensors (bytes), before the phases pick their moments."""

    stage: int  # 2 or 3
    weights: int  # frozen base weights (ZeRO-3: their partitions) and, for full fine-tuning, the trainable flat
    adapters: int  # LoRA: the trainable flat (ZeRO-2) or partition (ZeRO-3), in the model dtype
    master: int  # the fp32 partition
    states: int  # the optimizer's states over the fp32 partition
    grad_partition: int  # ZeRO-3: the gradient partitions' flat buffer; ZeRO-2 offload: its device gradient buffer
    bucket: int  # the contiguous gradient bucket (ZeRO-2: through backward; ZeRO-3: from the start on)
    reduce: int  # backward's end: the flat copy of the bucket's gradients (and gloo's working copy)
    init: int  # the start-up temporary (load)
    fp32_grad: int  # the optimizer step: the fp32 gradient of the partition
    step_temp: int  # the optimizer step's own temporaries (foreach AdamW)
    persistent: int  # ZeRO-3: parameters under the persistence threshold, gathered for good from the forward on
    gathered: int  # ZeRO-3: the other parameters gathered at the forward's end (trace complete, kept for reuse)
    prefetch: int  # ZeRO-3: the coalesced all-gather output of the prefetch, beside the gathered copies
    end_gather: int  # ZeRO-3: the input embedding, gathered for its backward while the reduction runs
    head_hook: int = 0  # full fine-tuning: lm_head's gradient and its input's, at the first gradient hook
    mlp_adapted: bool = True  # LoRA on an MLP projection: the first gradient hook comes before the MLP's backward
    accumulated: int = 0  # ZeRO-2 with accumulation: the gradient partition kept from micro-batch to micro-batch
    # the step's cast of the gradient partition to fp32: what 16-bit copies sit beside the fp32 gradient (ZeRO-2: the
    # contiguous partition and its flattened copy; ZeRO-3: the partitions' concatenation, the partitions being held)
    cast: int = 0
    # ZeRO-2: the contiguous gradient partition, made at the bucket's first flush: inside backward when the bucket
    # holds fewer elements than the trainable parameters (`zero2_terms`); 0 otherwise
    partition_in_backward: int = 0
    # ZeRO-3 QLoRA (`qlora_zero3_terms`): the gathered parameters the backward's layer moments still hold, and a
    # checkpointed layer's folded expert weights while its forward runs
    backward_gathered: int = 0
    forward_fold: int = 0
    # ZeRO-2 offload: at the backward's flush, the largest parameter's gradient and the fp64 copy its norm is taken from
    offload_flush: int = 0
    # ZeRO-2 without offload: the trainable parameters' own storages beside the flat buffer they are copied into at the
    # load, on a device with room for that buffer (`flatten_originals_bytes`); 0 where the load holds no such moment
    flatten: int = 0
    # ZeRO-2 without offload: the step's gradient norm on the worst rank, its contiguous gradient buffer and the fp64
    # copy of its largest gradient slice (app/core/zero_layout.py `grad_norm_bytes`); 0 where no such moment is modeled
    grad_norm: int = 0


def param_numels(model: ModelSpec, adapted: Iterable[Adapted], method: str) -> tuple[list[int], list[int]]:
    """(trainable, frozen) parameter sizes in elements, one entry per parameter: full fine-tuning trains every
    base parameter, LoRA only the adapters (the base is frozen)."""
    base = [p.numel for g in model.groups for _ in range(g.count) for p in g.params]
    adapters = [math.prod(s) for a in adapted for _ in range(a.group.count) for s in a.shapes]
    return (base, []) if method == "full" else (adapters, base)


def zero2_partition(trainable: int, gpus: int) -> int:
    """ZeRO-2's partition `Pn`: the trainable parameters flattened into one buffer padded to a multiple of
    `2·n` elements (`nccl_start_alignment_factor × world`), split in n. Source: stage_1_and_2.py
    (`flatten_dense_tensors_aligned`, `get_data_parallel_partitions`)."""
    return ceil_div(trainable, ALIGNMENT * gpus) * ALIGNMENT


def optimizer_partition_bytes(plan: TrainingPlan, partition: int) -> tuple[int, int]:
    """(states, step temporaries) of the plan's optimizer over the fp32 partition, one flat tensor: AdamW keeps
    `exp_avg` and `exp_avg_sq` (`2 × 4·Pn`) and foreach AdamW's step makes `sqrt(exp_avg_sq)` (`4·Pn`); SGD keeps
    none and steps in place; transformers' Adafactor over a 1-D tensor keeps the unfactored `exp_avg_sq` (`4·Pn`)
    and makes each update beside the one before (`update = exp_avg_sq.rsqrt().mul_(grad)`, `p.add_(-update)`:
    `2 × 4·Pn`); bitsandbytes' 8-bit optimizers 1 byte a state element (first-principles). Measured on CPU ranks
    (llama, full, ZeRO-2 and ZeRO-3, 2 ranks: Adafactor -16.7 % with one update counted). Source:
    torch/optim/adamw.py (`_multi_tensor_adamw`), torch/optim/sgd.py, transformers 5.24 optimization.py
    (`Adafactor.step`)."""
    fp32 = rounded(partition * FP32)
    if plan.optimizer in ("adamw", "paged_adamw_32bit"):
        return 2 * fp32, fp32
    if plan.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        return 2 * rounded(partition), fp32
    if plan.optimizer == "adafactor":
        return fp32, 2 * fp32
    return 0, 0


def zero2_terms(
    plan: TrainingPlan, trainable: list[int], frozen: list[int], buckets: Buckets = DEEPSPEED_BUCKETS
) -> ZeroTerms:
    """ZeRO-2: every GPU keeps the whole model, the trainable parameters as one flat buffer in the model dtype
    (`d·P`, the parameters views of it); its partition's fp32 master `4·Pn` (a clone, even in fp32) and the
    optimizer's states over it. At start-up the optimizer states are initialised with a zero fp32 gradient
    `4·Pn` beside the master. Backward copies each gradient into the bucket (`B·d`, made at the first gradient
    hook, freed at backward's end); at the end its gradients are flattened again for the all-reduce
    (`use_multi_rank_bucket_allreduce`, default True): `d·min(P, B)`. The step casts the partition's gradient to
    fp32 (`4·Pn`) beside the optimizer's temporaries; at that cast the contiguous gradient partition
    (`grads_in_partition`) and its flattened copy are alive beside it (`2·d·Pn`, freed before the step runs: the
    peak of an optimizer without temporaries, SGD's). That partition is made at the bucket's first flush
    (`copy_grads_in_partition`): within backward when the bucket holds fewer elements than the trainable parameters
    (the configs' auto sizes), so the backward's later moments hold it. Measured on CPU ranks (llama, full, SGD, 2
    ranks: -25.5 % without the cast; the backward phase -17.5 % without the partition). These `d·Pn` readings of the
    partition's buffers are replaced in `zero_terms` by the worst rank's whole-parameter ones and the step's gradient
    norm is added (app/core/zero_layout.py). Source: stage_1_and_2.py (`__init__`, `initialize_optimizer_states`, `setup_buckets`,
    `allreduce_bucket`, `copy_grads_in_partition`, `step`: `flat_grad_partition.to(fp32)`), 0.19.8."""
    d, p = DTYPE_BYTES[plan.dtype], sum(trainable)
    partition = zero2_partition(p, plan.gpus)
    flat = rounded(d * partition * plan.gpus)
    states, temp = optimizer_partition_bytes(plan, partition)
    base = sum(rounded(d * x) for x in frozen)
    full = plan.method == "full"
    return ZeroTerms(
        stage=2,
        weights=flat if full else base,
        adapters=0 if full else flat,
        master=rounded(FP32 * partition),
        states=states,
        grad_partition=0,
        bucket=rounded(d * buckets.reduce),
        reduce=rounded(d * min(p, buckets.reduce)),
        init=rounded(FP32 * partition),
        fp32_grad=rounded(FP32 * partition),
        step_temp=temp,
        cast=2 * rounded(d * partition),
        partition_in_backward=rounded(d * partition) if buckets.reduce < p else 0,
        persistent=0,
        gathered=0,
        prefetch=0,
        end_gather=0,
    )


def zero2_offload_terms(plan: TrainingPlan, trainable: list[int], terms: ZeroTerms) -> ZeroTerms:
    """ZeRO-2 with ZeRO-Offload (`offload_optimizer: cpu`): the fp32 partition and its gradient, the host bit16
    buffer, the optimizer's states and every temporary of its step live in host RAM (the step runs there), so the
    device keeps the flat weights, the bucket and the reduction as without offload, plus one device gradient buffer
    the size of the largest trainable parameter (`temp_grad_buffer_for_gpu_offload`, `d·max numel`, from the load on:
    `grad_partition`). The load peaks as the trainable parameters are flattened on the device, the flat copy beside
    the originals (`d·P` more, before the device gradient buffer is made: `init` net of it; the partition's clone the
    master is copied from, `d·Pn`, comes once the originals are freed; DeepSpeed flattens on the device when its free
    memory holds the flat buffer, `flatten_on_accelerator`, and on the host otherwise, `d·P` lower). Backward copies each reduced gradient straight into the host fp32 gradient, never into a device contiguous
    partition, and accumulation sums in host buffers: no device fp32 gradient, cast or accumulated partition. Before
    each copy it takes the norm of the parameter's partition slice from an fp64 copy of it (`get_norm_dtype`: fp64
    wherever the accelerator has it, CUDA included): at the flush, the largest parameter's gradient `d·L` and that
    copy `8·L` (the whole parameter: a bound on its slice; `offload_flush`). Which host optimizer runs (torch's, or
    DeepSpeedCPUAdam) changes no device bytes. Measured on CPU ranks by placement (app/calibration/zero_offload.py;
    mistral, full, auto buckets, 2 ranks: the backward -13.05 % without the flush; llama, full, fp32, auto buckets,
    2 ranks: the load's peak -18.78 % without the flat copy). Source: deepspeed 0.19.8
    runtime/zero/stage_1_and_2.py (`__init__`: `flatten_dense_tensors_aligned`, `weights_partition`,
    `temp_grad_buffer_for_gpu_offload`; `copy_grads_in_partition`'s offload path, `set_norm_for_param_grad_in_gpu`,
    `async_inplace_copy_grad_to_fp32_buffer_from_gpu`, `async_accumulate_grad_in_cpu_via_gpu`; `step`), utils.py.
    fp16 keeps this layout at `d = 2`: the dynamic loss scaler scales the scalar loss (base_optimizer.py
    `scale_if_loss`), its overflow check reduces each gradient to two scalars before its copy to the host
    (`update_offload_overflow_tracker`, utils.py `has_inf_or_nan`: amax/amin), the unscale runs in place on the host
    fp32 gradient (`unscale_and_clip_grads`) and an overflowed step (`has_overflow` reads `local_overflow`) only skips
    the host step; the masters stay fp32 (`_enforce_cpu_offload` guards only fp16/bf16 masters). QLoRA's trainable
    parameters are its adapters (the frozen 4-bit base is never flattened: `is_optimized_parameter`), its base and the
    load's cast `qlora_zero2_terms`. Measured on CPU ranks (cpu-matrix-zero-offload2: fp16 full and LoRA, QLoRA bf16,
    max -0.31 %)."""
    d, largest = DTYPE_BYTES[plan.dtype], max(trainable, default=0)
    partition = zero2_partition(sum(trainable), plan.gpus)
    flat = terms.weights if plan.method == "full" else terms.adapters
    return terms._replace(
        offload_flush=rounded(d * largest) + rounded(FP64 * largest),
        master=0,
        states=0,
        grad_partition=rounded(d * largest),
        init=max(0, max(flat, rounded(d * partition)) - rounded(d * largest)),
        fp32_grad=0,
        step_temp=0,
        cast=0,
        partition_in_backward=0,
    )


def zero3_terms(
    plan: TrainingPlan,
    trainable: list[int],
    frozen: list[int],
    embedding: int = 0,
    buckets: Buckets = DEEPSPEED_BUCKETS,
) -> ZeroTerms:
    """ZeRO-3: every parameter is partitioned (`⌈numel/n⌉` each); the trainable partitions are one flat buffer in
    the model dtype (`d·Pn`), the gradient partitions another (`d·Pn`, grad_accum_dtype = the model dtype), the
    fp32 master `4·Pn` (a clone even in fp32: measured, see the note below) and the states; the bucket `B·d` is made at
    start-up and kept. Parameters under the persistence threshold (`numel < 1e5`: norms, small projections, LoRA
    adapters of small rank) are gathered once and never released. Once the first step has recorded the trace,
    a parameter whose next use is within `max_reuse_distance` (1e9 elements) is not released after its forward,
    so at the forward's end the other parameters a backward runs through stay gathered (the last
    `MAX_REUSE_DISTANCE / 2` elements of the model: the traversal to a parameter's backward covers everything after
    it twice; a frozen input embedding has none), beside the prefetch's coalesced all-gather output of all of them
    (`min(·, stage3_prefetch_bucket_size)`). At backward's end the bucket's gradients
    are flattened for the reduce-scatter (`d·min(P, B)`), and torch's gloo backend makes an input-sized working
    copy (measured on CPU ranks; NCCL reduces into the input's own chunk), while the input embedding (`embedding`
    elements) is gathered for its backward when one runs (full fine-tuning; LoRA with checkpointing, whose
    `enable_input_require_grads` makes the embedding's output need a gradient). Start-up gathers the largest
    trainable parameter once. The step releases the persistent parameters and gathers them again after it. Source: stage3.py (`_create_fp16_partitions_with_defragmentation`, `_create_fp32_partitions`,
    `_setup_for_real_optimizer`), partitioned_param_coordinator.py (`__params_to_release`), coalesced_collectives.py
    (`reduce_scatter_coalesced`), 0.19.8."""
    d, n, p = DTYPE_BYTES[plan.dtype], plan.gpus, sum(trainable)
    partition = sum(ceil_div(x, n) for x in trainable)
    states, temp = optimizer_partition_bytes(plan, partition)
    frozen_parts = sum(rounded(d * ceil_div(x, n)) for x in frozen)
    every = trainable + frozen
    persistent = sum(rounded(d * x) for x in every if x < buckets.persistence)
    others = [x for x in every if x >= buckets.persistence]
    backprop_embedding = plan.method == "full" or plan.gradient_checkpointing
    reused = list(others)
    if not backprop_embedding and embedding in reused:  # no backward runs through it: released after its forward
        reused.remove(embedding)
    kept = min(sum(reused), MAX_REUSE_DISTANCE // 2)
    reduced = rounded(d * min(p, buckets.reduce))
    flat = rounded(d * partition)
    full = plan.method == "full"
    return ZeroTerms(
        stage=3,
        weights=flat if full else frozen_parts,
        adapters=0 if full else flat,
        master=rounded(FP32 * partition),  # a clone in fp32 too (`fp32_master_partition`)
        states=states,
        grad_partition=flat,
        bucket=rounded(d * buckets.reduce),
        reduce=reduced + (reduced if plan.device == "cpu" else 0),
        init=rounded(d * max(trainable, default=0)),
        fp32_grad=rounded(FP32 * partition),
        step_temp=temp,
        cast=flat,  # the step concatenates the gradient partitions (`d·Pn`) before casting them to fp32
        persistent=persistent,
        gathered=sum(rounded(d * x) for x in reused) if kept == sum(reused) else rounded(d * kept),
        prefetch=rounded(d * min(sum(others), MAX_REUSE_DISTANCE // 2, buckets.prefetch)),
        end_gather=rounded(d * embedding) if embedding >= buckets.persistence and backprop_embedding else 0,
    )


def head_hook_bytes(model: ModelSpec, plan: TrainingPlan) -> int:
    """Full fine-tuning: the first gradient hook is lm_head's, right after its backward made its weight's gradient
    `d·V·h` and its input's `d·T·h`; every activation is still alive (the final norm's backward is next), and ZeRO-2
    makes its bucket there. Measured on CPU ranks (tracker dumps of the backward's peak, llama, no checkpointing).
    Source: stage_1_and_2.py (`grad_handling_hook` → `setup_buckets`)."""
    if plan.method != "full":
        return 0
    d, h = DTYPE_BYTES[plan.dtype], model.arch.hidden_size
    return rounded(d * model.arch.vocab_size * h) + rounded(d * plan.batch_size * plan.seq_len * h)


def zero2_offload_host_bytes(plan: TrainingPlan, trainable: int) -> int:
    """ZeRO-2 offload's host RAM between steps (full, LoRA, QLoRA), for `trainable` parameters: the fp32 partition
    `4·Pn` (a clone, in fp32 too) and its gradient `4·Pn`, the host bit16 buffer `d·Pn`, the optimizer's states over the
    partition and, with accumulation, the host accumulation buffers (`d·Pn`: one per parameter in the partition,
    whole parameters, so a lower bound); the step's own temporaries (`optimizer_partition_bytes`) and one host
    gradient buffer of the largest parameter (`temp_grad_buffer_for_cpu_offload`) come on top. Measured on CPU ranks
    by placement (app/calibration/zero_offload.py: the host peaks of cpu-matrix-zero-offload are this plus the step's
    temporaries and that buffer). Source: deepspeed 0.19.8 runtime/zero/stage_1_and_2.py (`__init__`,
    `initialize_optimizer_states`, `async_accumulate_grad_in_cpu_via_gpu`)."""
    d = DTYPE_BYTES[plan.dtype]
    partition = zero2_partition(trainable, plan.gpus)
    states, _ = optimizer_partition_bytes(plan, partition)
    accumulation = rounded(d * partition) if plan.grad_accum_steps > 1 else 0
    return 2 * rounded(FP32 * partition) + rounded(d * partition) + states + accumulation


def offload_head_norm_bytes(model: ModelSpec, plan: TrainingPlan, buckets: Buckets) -> int:
    """ZeRO-2 offload, full fine-tuning: lm_head's gradient (`V·h` elements) outgrows a reduce bucket smaller than it
    (the configs' auto `h·h`), so it is reduced at its own hook, beside every activation, and its norm taken there
    from an fp64 copy of its partition slice: at most `8·V·h` (`zero2_offload_terms`). Measured on CPU ranks
    (mistral, full, auto buckets, 2 ranks: the rank holding lm_head peaks there). Source: stage_1_and_2.py
    (`reduce_independent_p_g_buckets_and_remove_grads`: the extra-large parameter; `set_norm_for_param_grad_in_gpu`)."""
    head = model.arch.vocab_size * model.arch.hidden_size
    if plan.method != "full" or buckets.reduce >= head:
        return 0
    return rounded(FP64 * head)


# ZeRO-3's fp32 master in an fp32 run: stage3.py `_create_fp32_partitions` shares the partition when its dtype is the
# master's and `partition.device == self.device`, but `self.device` is the accelerator's device *name* (a str) and
# torch compares a torch.device with a str as unequal (torch 2.13: `torch.device("cpu") == "cpu"` is False), so it
# clones (`converted.clone().detach()`), on CUDA ("cuda:0") as on CPU. Measured on CPU ranks (cpu-matrix-zero-fp32:
# full fine-tuning, every phase `4·Pn` above the shared-partition reading: -11.50 % and -10.22 % before).


def zero2_offload(plan: TrainingPlan) -> bool:
    """ZeRO-Offload as DeepSpeed's own terms model it (`zero2_offload_terms`, `zero2_offload_host_bytes`): ZeRO-2's
    offload_optimizer on several GPUs, for full fine-tuning, LoRA and QLoRA (its adapters; its base and load:
    `qlora_zero2_terms`)."""
    return plan.offload and plan.sharding == "zero2" and plan.gpus > 1


def input_embedding_numel(model: ModelSpec) -> int:
    """Elements of the input embedding outside the decoder layers (0 when the model has none)."""
    embedding = [p.numel for g in model.groups if g.kind == "embedding" and not g.in_layers for p in g.params]
    return embedding[0] if embedding else 0


def zero_terms(
    model: ModelSpec, plan: TrainingPlan, adapted: Iterable[Adapted], inv: Inventory | None = None
) -> ZeroTerms | None:
    """The ZeRO terms of a zero2/zero3 plan that DeepSpeed's own tensors model (full or LoRA, 16/32-bit; ZeRO-2's
    offload_optimizer for full and LoRA: `zero2_offload_terms`; ZeRO-3's offload_param with offload_optimizer:
    `zero3_offload.zero3_offload_terms`; QLoRA under ZeRO-2, from the plan's inventory `inv`: `qlora_zero2_terms`);
    None for other plans (they keep estimate's terms)."""
    if plan.sharding not in ZERO or plan.gpus < 2 or plan.autocast:
        return None
    if plan.offload and not (zero2_offload(plan) or zero3_offload(plan)):
        return None  # QLoRA's offload under ZeRO-3: refused (app/calibration/zero.py)
    if plan.method == "qlora" and inv is None:
        return None
    trainable, frozen = param_numels(model, adapted, plan.method)
    buckets = bucket_sizes(model, plan)
    if plan.sharding == "zero2":
        terms = zero2_terms(plan, trainable, frozen, buckets)
    else:
        terms = zero3_terms(plan, trainable, frozen, input_embedding_numel(model), buckets)
    mlp = plan.method == "full" or any(a.group.leaf in MLP_LEAVES for a in adapted)
    accumulated = accumulated_partition_bytes(plan, trainable) if plan.sharding == "zero2" else 0
    head = head_hook_bytes(model, plan)
    if zero3_offload(plan):  # offload_param and offload_optimizer (app/core/zero3_offload.py)
        terms = zero3_offload_terms(model, plan, (trainable, frozen), terms, buckets)
        return terms._replace(head_hook=head + head_flush_bytes(model, plan, buckets), mlp_adapted=mlp, accumulated=0)
    if plan.offload:
        terms, accumulated = zero2_offload_terms(plan, trainable, terms), 0  # accumulation: host buffers
        head += offload_head_norm_bytes(model, plan, buckets)
    if plan.method == "qlora" and inv is not None and plan.sharding == "zero2":
        terms = qlora_zero2_terms(model, plan, inv, terms)
    elif plan.method == "qlora" and inv is not None:
        terms = qlora_zero3_terms(model, plan, inv, (trainable, adapted), terms, buckets)
    flatten = flatten_originals_bytes(plan, trainable) if plan.sharding == "zero2" and not plan.offload else 0
    terms = terms._replace(head_hook=head, mlp_adapted=mlp, accumulated=accumulated, flatten=flatten)
    if plan.sharding == "zero2" and not plan.offload:  # the worst rank's buffers, from the layout
        fields = (plan.method, DTYPE_BYTES[plan.dtype], plan.gpus, plan.grad_accum_steps > 1)
        terms = terms._replace(**zero2_layout_bytes(model, adapted, fields, buckets.reduce)._asdict())
    return terms


def flatten_originals_bytes(plan: TrainingPlan, trainable: list[int]) -> int:
    """ZeRO-2 without offload: the trainable parameters' own storages (`d·P`, one per parameter), alive beside the
    flat buffer DeepSpeed copies them into at initialisation, before the fp32 master exists, when the device's free
    memory holds that buffer; the parameters are then repointed into it and their storages freed. Without that room
    DeepSpeed first moves them to the host (`param.cpu_data = param.data.cpu()`) and flattens there, so the moment
    never stops a plan that otherwise fits: it is what max_memory_allocated reads at the load on a device with room
    (`flatten_peak`). The CPU accelerator always has it (cpu_accelerator.py `available_memory`: psutil's available
    memory). ZeRO-2's offload counts the same moment in its `init` (`zero2_offload_terms`). Source: deepspeed 0.19.8
    runtime/zero/stage_1_and_2.py `DeepSpeedZeroOptimizer.__init__` (`flatten_on_accelerator = available_memory >=
    flat_buffer_bytes`, `flatten_dense_tensors_aligned(..., use_cpu_data=False)`, `_update_model_bit16_weights`)."""
    d = DTYPE_BYTES[plan.dtype]
    return sum(rounded(d * x) for x in trainable)


def flatten_peak(z: ZeroTerms) -> int:
    """The load's flattening moment (`flatten_originals_bytes`): the frozen weights, the flat buffer and the
    originals beside it; 0 where the plan's load has no such moment."""
    return z.weights + z.adapters + z.flatten if z.flatten else 0


def qlora_zero2_terms(model: ModelSpec, plan: TrainingPlan, inv: Inventory, terms: ZeroTerms) -> ZeroTerms:
    """QLoRA under ZeRO-2: the 4-bit weights stay as bitsandbytes packed them, but the engine casts every other
    parameter to the model dtype (`_cast_module_mixed_precision`: the embeddings, norms and lm_head that
    prepare_model_for_kbit_training upcast to fp32, and the adapters, flattened as LoRA's), so the base keeps its
    quantized bytes and `d/4` of the rest (the activations follow: `step.precision`). At start-up that cast runs
    over the fp32 originals, each copy made beside them: the load peaks at the whole fp32 model and its largest
    non-quantized parameter's copy (`init`, net of the held terms). Measured on CPU ranks (llama, 2 layers, 2
    ranks: the peak at the cast, +39 % with the generic terms). Source: deepspeed 0.19.8 runtime/engine.py
    (`_cast_module_mixed_precision`), peft utils/other.py (`prepare_model_for_kbit_training`)."""
    d = DTYPE_BYTES[plan.dtype]
    weights = inv.base_quantized + ceil_div((inv.base.total - inv.base_quantized) * d, FP32)
    return terms._replace(weights=weights, init=qlora_cast_bytes(model, plan, inv, terms._replace(weights=weights)))


def qlora_cast_bytes(model: ModelSpec, plan: TrainingPlan, inv: Inventory, terms: ZeroTerms) -> int:
    """The load's peak under QLoRA and ZeRO: the engine's cast to the model dtype runs over the whole fp32-upcast
    model on every rank (ZeRO-3 partitions it only afterwards, in the optimizer's constructor), each copy made
    beside its original: the whole model as loaded and its largest non-quantized parameter's copy, net of what the
    load moment holds (`zero_held`: none of it exists yet at the cast; ZeRO-3's bucket can outweigh the cast, and
    then the load peaks after it). Source: deepspeed 0.19.8 runtime/engine.py (`_configure_distributed_model`
    before `_configure_optimizer`; `_cast_module_mixed_precision`)."""
    largest = max((p.numel for g in model.groups if g.name not in inv.quantized for p in g.params), default=0)
    held = sum(zero_held(terms).values())
    return max(0, inv.base.total + inv.adapters.total + rounded(DTYPE_BYTES[plan.dtype] * largest) - held)


def frozen_zero3_params(model: ModelSpec, plan: TrainingPlan, inv: Inventory) -> list[tuple[int, int, bool]]:
    """QLoRA's frozen parameters as ZeRO-3 partitions them, (elements, bytes each, in a decoder layer): a quantized
    weight is its packed uint8/int8 tensor (`quantized_weight_tensors`' first, 1 byte an element: ZeRO-3 partitions
    and gathers it in its own dtype, bucketed apart from the 16-bit ones), every other parameter the model dtype the
    engine cast it to. Source: deepspeed 0.19.8 runtime/zero/partition_parameters.py (`_partition_param`:
    `torch.empty(partition_size, dtype=param.dtype)`; `_all_gather_coalesced` groups by dtype)."""
    d, quant = DTYPE_BYTES[plan.dtype], plan.quant
    out: list[tuple[int, int, bool]] = []
    for g in model.groups:
        for p in g.params:
            if g.name in inv.quantized and p.name == "weight" and quant in ("nf4", "fp4", "int8"):
                packed = quantized_weight_tensors(p.numel, g.out_features, quant, plan.double_quant)[0]
                out += [(packed, 1, g.in_layers)] * g.count
            else:
                out += [(p.numel, d, g.in_layers)] * g.count
    return out


def qlora_zero3_terms(
    model: ModelSpec,
    plan: TrainingPlan,
    inv: Inventory,
    lora: tuple[list[int], Iterable[Adapted]],
    terms: ZeroTerms,
    buckets: Buckets,
) -> ZeroTerms:
    """QLoRA under ZeRO-3: the engine casts the fp32-upcast modules and the adapters to the model dtype as under
    ZeRO-2 (`qlora_zero2_terms`), then partitions every parameter, the packed 4-bit weights too, at their own bytes
    (`frozen_zero3_params`): each GPU keeps `⌈bytes/n⌉` of each, and bitsandbytes' quant states (absmax, nested
    states, code maps: attributes of the Params4bit, no parameters) whole. The persistent parameters and those kept
    gathered for reuse are those of `zero3_terms` at those bytes (the threshold reads elements: a packed weight's
    are its bytes), and the backward's layer moments still hold every gathered one but lm_head (released after its
    backward, the others only after theirs). The prefetch loop adds whole parameters until the bucket is reached,
    so its output is up to one decoder-layer parameter above the bucket (the prefetch that reaches lm_head is issued
    while the last layer runs, lm_head not yet among the gathered ones: its buffer stands in for its copy). A
    checkpointed layer whose fused experts PEFT wraps (ParamWrapper) holds their folded weights `W + BA` (`d` each,
    the factors already in `d`) while its forward runs. The load peaks at the cast (`qlora_cast_bytes`). Measured on CPU ranks (llama, mistral, mixtral, 2 and
    4 ranks: +15 % and, mixtral checkpointed at auto buckets, -11 % in forward before). Source: deepspeed 0.19.8
    runtime/zero/partition_parameters.py (`_convert_to_zero_parameters`, `_partition_param`),
    partitioned_param_coordinator.py (`fetch_sub_module`'s prefetch loop, `__params_to_release`), bitsandbytes
    nn/modules.py (`Params4bit.quant_state`), peft tuners/lora/layer.py (`ParamWrapper`)."""
    trainable, adapted = lora
    d = DTYPE_BYTES[plan.dtype]
    frozen = frozen_zero3_params(model, plan, inv)
    every = [(x, d) for x in trainable] + [(x, b) for x, b, _ in frozen]
    others = [rounded(b * x) for x, b in every if x >= buckets.persistence]
    layer_params = [(x, d) for x in trainable] + [(x, b) for x, b, layer in frozen if layer]  # the adapters' too
    overshoot = max((rounded(b * x) for x, b in layer_params if x >= buckets.persistence), default=0)
    reused = list(others)
    embedding = rounded(d * input_embedding_numel(model))
    if embedding and not plan.gradient_checkpointing and embedding in reused:
        reused.remove(embedding)  # no backward runs through it: released after its forward
    gathered = min(sum(reused), rounded(d * (MAX_REUSE_DISTANCE // 2)))
    head = [rounded(d * p.numel) for g in model.groups if g.name.endswith("lm_head") for p in g.params]
    fold = sum(p.numel for a in adapted for p in a.group.params if p.name in a.wrapped_params)
    terms = terms._replace(
        weights=sum(rounded(b * ceil_div(x, plan.gpus)) for x, b, _ in frozen) + inv.quant_states,
        persistent=sum(rounded(b * x) for x, b in every if x < buckets.persistence),
        gathered=gathered,
        prefetch=min(sum(others), rounded(d * buckets.prefetch) + overshoot),
        backward_gathered=max(0, gathered - sum(h for h in head if h in reused)),
        forward_fold=rounded(d * fold) if plan.gradient_checkpointing else 0,
    )
    return terms._replace(init=qlora_cast_bytes(model, plan, inv, terms))


def accumulated_partition_bytes(plan: TrainingPlan, trainable: list[int]) -> int:
    """ZeRO-2 with gradient accumulation: the flat gradient partition `d·Pn` that contiguous_gradients copies each
    reduced gradient of the rank's partition into (`grads_in_partition`, made at the first reduction, the partition's
    `.grad`s views of it) lives until the optimizer step releases it (`_release_ipg_buffers`), so every micro-batch
    after the first runs beside it. Measured on CPU ranks (cpu-matrix-zero-accum: full fine-tuning, 3 and 4
    micro-batches, each later micro-batch's forward `d·Pn` above the first's; -8.18 % and -7.53 % before). Source:
    deepspeed 0.19.8 runtime/zero/stage_1_and_2.py (`copy_grads_in_partition`, `_release_ipg_buffers`)."""
    if plan.grad_accum_steps < 2:
        return 0
    d = DTYPE_BYTES[plan.dtype]
    return rounded(d * zero2_partition(sum(trainable), plan.gpus))


class StepActivations(NamedTuple):
    """What a ZeRO step shares with a one-GPU step (app/core/estimate.py's terms): activations and transients."""

    activations: int
    logits_forward: int
    logits_backward: int
    layer_forward: int
    layer_backward: int
    dequant: int
    kept_logits: int
    head_saved: int  # what the final norm saves, freed by its backward
    layer_saved: int  # what one decoder layer saves (the last one's is still being made while it runs)
    mlp_saved: int  # the MLP half's share of it


Moment = dict[str, int]


def zero_held(z: ZeroTerms) -> Moment:
    """What every moment from the load on holds: weights, adapters, the fp32 master; ZeRO-3 also its gradient
    partitions and its bucket."""
    return {
        "base_weight_bytes": z.weights,
        "lora_adapter_bytes": z.adapters,
        "master_weight_bytes": z.master,
        "gradient_bytes": z.grad_partition,
        "zero_bucket_bytes": z.bucket if z.stage == 3 else 0,
    }


def zero_moments(z: ZeroTerms, a: StepActivations) -> dict[str, list[Moment]]:
    """Each phase's candidate moments under ZeRO (the states exist from the first step on, so every moment after
    the load holds them, as the second step's do): load with its start-up temporary; forward at the logits and in a
    layer (ZeRO-3: every parameter still gathered, and until the logits the prefetch's output beside them);
    backward at the loss, at the first gradient hook in the last layer (ZeRO-2 makes its bucket there: the final
    norm's saved tensors and the logits freed) and at its end (the bucket's gradients flattened for the
    reduction); the optimizer step with the fp32 gradient and the step's temporaries (`zero2_terms`,
    `zero3_terms`). Measured on CPU ranks (the tracker's storages at each peak, by allocation site)."""
    load = zero_held(z)
    step_held = {**load, "optimizer_state_bytes": z.states, "kept_logits_bytes": a.kept_logits}
    held = {**step_held, "gradient_bytes": z.grad_partition + z.accumulated}  # forward and backward
    gathered = z.persistent + z.gathered
    forward_layer = {"layer_transient_bytes": a.layer_forward, "dequant_transient_bytes": a.dequant}
    return {
        "load": [{**load, "zero_init_bytes": z.init}],
        "forward": [
            {
                **held,
                "allgather_buffer_bytes": gathered,
                "activation_bytes": a.activations,
                "logits_peak_bytes": a.logits_forward,
            },
            {  # the final norm done, lm_head not yet run: the prefetch's output still beside the gathered parameters
                **held,
                "allgather_buffer_bytes": gathered + z.prefetch,
                "activation_bytes": a.activations,
            },
            {  # the last layer running, the prefetch's output beside the gathered parameters
                **held,
                "allgather_buffer_bytes": gathered + z.prefetch,
                "activation_bytes": a.activations - a.head_saved,
                **forward_layer,
                "layer_transient_bytes": a.layer_forward + z.forward_fold,
            },
        ],
        "backward": zero_backward_moments(z, a, held, gathered),
        "optimizer": [
            {**step_held, "gradient_bytes": z.grad_partition + z.fp32_grad, "optimizer_temp_bytes": z.step_temp},
            # the cast to fp32 before the step (`zero2_terms`, `zero3_terms`): an optimizer without temporaries peaks here
            {**step_held, "gradient_bytes": z.grad_partition + z.cast + z.fp32_grad},
            {**step_held, "gradient_bytes": z.grad_partition + z.grad_norm},  # ZeRO-2: the norm's fp64 copy, before it
            {**step_held, "allgather_buffer_bytes": z.persistent},  # after the step: the persistent ones gathered again
        ],
    }


def zero_backward_moments(z: ZeroTerms, a: StepActivations, held: Moment, gathered: int) -> list[Moment]:
    """ZeRO's backward (`zero_moments`): at the loss; at lm_head's gradient hook under full fine-tuning; at the first
    gradient hook in the last layer (ZeRO-2 makes its bucket there: the final norm's saved tensors and the logits
    freed); at its end, the bucket's gradients flattened for the reduction."""
    # ZeRO-2's: the buffer kept from the last micro-batch, or the one made in this backward (beside the kept one on the
    # ranks the backward reaches first: app/core/zero_layout.py `backward_partition_bytes`)
    partition = z.grad_partition + max(z.accumulated, z.partition_in_backward)
    backward = {
        **held,
        "gradient_bytes": partition,
        "zero_bucket_bytes": z.bucket,
        "allgather_buffer_bytes": z.persistent + z.backward_gathered,
    }
    layer = {"layer_transient_bytes": a.layer_backward, "dequant_transient_bytes": a.dequant}
    return [
        {
            **held,
            "allgather_buffer_bytes": gathered,
            "activation_bytes": a.activations,
            "logits_peak_bytes": a.logits_backward,
        },
        *(
            [
                {
                    **backward,
                    "activation_bytes": a.activations,
                    "gradient_bytes": partition + z.head_hook,
                }
            ]
            if z.head_hook
            else []
        ),
        {  # the first gradient hook in the last layer: its MLP's saved tensors gone first when no adapter is there
            **backward,
            **layer,
            "activation_bytes": a.activations - a.head_saved - (0 if z.mlp_adapted else a.mlp_saved),
        },
        {**backward, "zero_reduce_bytes": z.reduce + z.end_gather},
        *([{**backward, "gradient_bytes": partition + z.offload_flush}] if z.offload_flush else []),
    ]
