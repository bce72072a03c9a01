"""DeepSpeed ZeRO-2's flat parameter layout, rank by rank: which parameters each rank's partition intersects.

ZeRO-2 (no offload) copies each reduced gradient of a rank's partition into one contiguous buffer,
`grads_in_partition`, sized by the WHOLE parameters that intersect the partition, not by the partition `Pn`; and the
step's gradient norm casts each gradient slice of the partition to fp64, one at a time. Both depend on where the
parameter boundaries fall against the partition boundaries, so this module lays the trainable parameters out as
DeepSpeed does and reads each rank's bytes; the estimate takes the worst rank (the peak a plan must fit). At real
widths a parameter is small against `Pn` and the whole-parameter excess is at most two parameters' worth; on small
models at 6-8 ranks it is several times `Pn`. Measured on CPU ranks (calibration/cpu-matrix-zero-flatten.toml:
mistral, fp32, SGD, 8 ranks, accumulation 2: the backward -20.75 % with `d·Pn`). Source: deepspeed 0.19.8
runtime/zero/stage_1_and_2.py (`__init__`: `round_robin_gradients` default False keeps the module order,
`parameter_alignment` default False pads no parameter, `flatten_dense_tensors_aligned` pads the flat buffer to
`2·n` elements; `get_partition_info`; `copy_grads_in_partition`; `get_grad_norm_direct`), utils.py
(`get_norm_dtype`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

from app.core.adapters import Adapted
from app.core.quant import ceil_div, rounded
from app.core.spec import ModelSpec, ModuleGroup
from app.core.units import FP32

ALIGNMENT = 2  # stage_1_and_2.py `nccl_start_alignment_factor`
FP64 = 8  # utils.py `get_norm_dtype`: torch.double wherever the accelerator supports it (CPU and CUDA)
SCALAR = rounded(FP64)  # one fp64 norm, as the caching allocator accounts it


class Param(NamedTuple):
    """One trainable parameter in the flat buffer: its elements and its decoder layer (-1 before the layers, `L`
    after them)."""

    numel: int
    layer: int


class RankLayout(NamedTuple):
    """What one rank's partition intersects (elements)."""

    whole: int  # Σ numel of every parameter intersecting the partition: `grads_in_partition`
    largest_slice: int  # the largest part of one parameter inside the partition: the norm's largest fp64 copy
    norms_before: int  # the gradient norms already taken when that copy is made (fp64 scalars kept in a list)
    tail: bool  # the partition intersects the last decoder layer or what follows it (reduced first in backward)


def _instance_numels(model: ModelSpec, adapted: Iterable[Adapted], method: str) -> list[tuple[ModuleGroup, list[int]]]:
    """Each trainable module group in module order, with the elements of one instance's trainable parameters."""
    if method == "full":
        return [(g, [p.numel for p in g.params]) for g in model.groups]
    return [(a.group, [math.prod(s) for s in a.shapes]) for a in adapted]


def parameter_order(model: ModelSpec, adapted: Iterable[Adapted], method: str) -> list[Param]:
    """The trainable parameters in `model.parameters()` order, the order DeepSpeed flattens them in
    (`round_robin_gradients` default False): the groups before the decoder layers, then layer by layer each layer
    group's instances (a group of `k·L` modules gives each layer `k`; a group of fewer than `L`, e.g. every other
    layer's experts, is spread evenly over them: an approximation), then the groups after. Full fine-tuning trains
    every base parameter; LoRA its adapters, in the adapted modules' order (PEFT registers `lora_A` before `lora_B`,
    then DoRA's magnitude: the order of `Adapted.shapes`). Source: torch nn.Module.parameters (registration order),
    ModelSpec.groups (module order, `*` for the layer index), peft tuners/lora/layer.py (`LoraLayer.__init__`)."""
    layers = model.arch.num_layers
    names = [g.name for g in model.groups]
    first = next((i for i, g in enumerate(model.groups) if g.in_layers), len(names))
    groups = _instance_numels(model, adapted, method)
    inside = [(g, x) for g, x in groups if g.in_layers]
    before = [
        Param(n, -1)
        for g, x in groups
        if not g.in_layers and names.index(g.name) < first
        for _ in range(g.count)
        for n in x
    ]
    after = [
        Param(n, layers)
        for g, x in groups
        if not g.in_layers and names.index(g.name) > first
        for _ in range(g.count)
        for n in x
    ]
    out = before
    for layer in range(layers):
        for group, numels in inside:
            share = (layer + 1) * group.count // layers - layer * group.count // layers
            out = out + [Param(n, layer) for _ in range(share) for n in numels]
    return out + after


def partition_layout(params: list[Param], gpus: int, layers: int) -> list[RankLayout]:
    """Each rank's partition of the flat buffer (padded to a multiple of `2·n` elements, split in `n` equal
    parts, `get_data_parallel_partitions`) and the parameters `get_partition_info` counts in it: every parameter
    starting inside it and the one it starts within."""
    total = sum(p.numel for p in params)
    size = ceil_div(total, ALIGNMENT * gpus) * ALIGNMENT
    out = []
    for rank in range(gpus):
        start, end, offset = size * rank, size * (rank + 1), 0
        whole = largest = before = count = 0
        tail = False
        for p in params:
            if start <= offset < end or offset < start < offset + p.numel:
                piece = min(offset + p.numel, end) - max(offset, start)
                if piece > largest:
                    largest, before = piece, count
                whole, count, tail = whole + p.numel, count + 1, tail or p.layer >= layers - 1
            offset += p.numel
        out.append(RankLayout(whole, largest, before, tail))
    return out


def grads_in_partition_bytes(layout: list[RankLayout], d: int, *, tail_only: bool = False) -> int:
    """The worst rank's contiguous gradient buffer `d·Σ whole parameters` (`copy_grads_in_partition`:
    `torch.empty(Σ numel of params_in_partition)`), over every rank or, inside backward, over the ranks whose
    partition the backward reaches first (`tail_only`: the last decoder layer and what follows it; the other
    ranks make theirs later, when fewer activations are alive)."""
    return max((rounded(d * r.whole) for r in layout if r.tail or not tail_only), default=0)


def backward_partition_bytes(layout: list[RankLayout], d: int, accumulation: bool) -> int:
    """ZeRO-2's gradient buffers inside backward, on the worst rank the backward reaches first: the new
    `grads_in_partition`, and with accumulation the previous micro-batch's beside it (the epilogue releases the
    engine's pointer, `_release_ipg_buffers`, but `all_grad_tensors` keeps its storage until the boundary's
    epilogue adds the new gradients into it, so from the second micro-batch on a new buffer is made beside it:
    measured twice the buffer at the backward's peak). Source: stage_1_and_2.py
    (`independent_gradient_partition_epilogue`, `get_all_grad_tensors`, `copy_grads_in_partition`)."""
    return max(
        (rounded(d * r.whole) * (2 if accumulation else 1) for r in layout if r.tail),
        default=0,
    )


def step_cast_bytes(layout: list[RankLayout], d: int, partition: int) -> int:
    """The 16-bit copies beside the step's fp32 gradient of the partition: the worst rank's `grads_in_partition`
    (the slices `averaged_gradients` holds are views of it) and the flattened partition `d·Pn` the cast reads
    (`step`: `flat_grad_partition = self.flatten(self.averaged_gradients[i])`, `.to(fp32)`, then `del
    flat_grad_partition`); in fp32 the cast is the flattened partition itself (torch `Tensor.to` returns the tensor
    when the dtype already matches), so only the buffer is beside it. Measured on CPU ranks (mistral and llama, fp32,
    6 and 8 ranks: the optimizer phase +5 % to +8 % with the flat copy counted). Source: stage_1_and_2.py (`step`,
    `get_flat_partition`)."""
    flat = 0 if d == FP32 else rounded(d * partition)
    return grads_in_partition_bytes(layout, d) + flat


def grad_norm_bytes(layout: list[RankLayout], d: int) -> int:
    """The step's gradient norm on the worst rank: `grads_in_partition` and the fp64 copy of the largest gradient
    slice in the partition (`get_grad_norm_direct` takes `vector_norm(g.data.to(get_norm_dtype()))` of each slice
    in `averaged_gradients`, one at a time, keeping each norm as an fp64 scalar), before the fp32 cast. Measured on
    CPU ranks (mistral, bf16, AdamW, 8 ranks: rank 0's optimizer peak is the whole embedding's gradient and an fp64
    copy of its 450,784-element slice). Source: stage_1_and_2.py (`scaled_global_norm`, `get_grad_norm_direct`),
    utils.py (`get_norm_dtype`)."""
    return max(
        (rounded(d * r.whole) + rounded(FP64 * r.largest_slice) + SCALAR * (r.norms_before + 1) for r in layout),
        default=0,
    )


class LayoutBytes(NamedTuple):
    """The ZeRO-2 terms the parameter layout sets (bytes; `zero2_terms`' names)."""

    accumulated: int
    partition_in_backward: int
    cast: int
    grad_norm: int


def zero2_layout_bytes(
    model: ModelSpec,
    adapted: Iterable[Adapted],
    plan_fields: tuple[str, int, int, bool],
    reduce_bucket: int,
) -> LayoutBytes:
    """ZeRO-2 without offload, from the layout (`partition_layout`): the accumulated buffer (kept from micro-batch
    to micro-batch, every rank), the buffers inside backward (made at the bucket's first flush when the bucket
    holds fewer elements than the trainable parameters), the step's cast and the gradient norm. `plan_fields` is
    (method, d, gpus, accumulation)."""
    method, d, gpus, accumulation = plan_fields
    params = parameter_order(model, adapted, method)
    layout = partition_layout(params, gpus, model.arch.num_layers)
    total = sum(p.numel for p in params)
    partition = ceil_div(total, ALIGNMENT * gpus) * ALIGNMENT
    return LayoutBytes(
        accumulated=grads_in_partition_bytes(layout, d) if accumulation else 0,
        partition_in_backward=backward_partition_bytes(layout, d, accumulation) if reduce_bucket < total else 0,
        cast=step_cast_bytes(layout, d, partition),
        grad_norm=grad_norm_bytes(layout, d),
    )
